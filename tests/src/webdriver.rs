//! A small W3C WebDriver client for driving Debian's headless Chromium
//! through `chromedriver`, for the review desk's browser tests. Plain HTTP
//! to chromedriver on loopback through the harness's client
//! ([`crate::http`]); every wait is bounded.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, Endpoint, Request};

/// Where Debian's packages put them (`chromium`, `chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest wait for the page to reach a state.
pub const WAIT: Duration = Duration::from_secs(20);
/// Longest one WebDriver command may take (a navigation waits for the
/// page to load).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running chromedriver with one headless Chromium session. Both end
/// when this is dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// Runs the HTTP client for the synchronous WebDriver calls: browser
    /// tests drive the page from a blocking thread, where a runtime of its
    /// own may block.
    runtime: tokio::runtime::Runtime,
}

/// The Enter key, for [`Browser::press`].
pub const KEY_ENTER: char = '\u{E007}';
/// The Escape key, for [`Browser::press`].
pub const KEY_ESCAPE: char = '\u{E00C}';
/// The Tab key, for [`Browser::press`].
pub const KEY_TAB: char = '\u{E004}';

/// How an element is drawn: its box (CSS pixels, from the viewport's
/// top left) and its computed style.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// Computed `display`.
    pub display: String,
    /// Computed `visibility`.
    pub visibility: String,
    /// `checkVisibility()`: neither it nor an ancestor is `display: none`,
    /// `visibility: hidden` or fully transparent.
    pub shown: bool,
}

impl Rendered {
    /// Drawn with a box of some size (wherever it is).
    pub fn is_drawn(&self) -> bool {
        self.shown
            && self.display != "none"
            && self.visibility == "visible"
            && self.width > 0.0
            && self.height > 0.0
    }
}

/// An element on the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session.
    /// The server's development certificate is self-signed for tests, so
    /// the browser is told to accept it; TLS itself is tested elsewhere.
    pub fn start() -> Browser {
        Browser::launch(None)
    }

    /// [`start`](Self::start) with the browser's preferred languages set
    /// (`navigator.languages`, `Accept-Language`), e.g. `"fr-FR,fr"`.
    pub fn start_with_languages(languages: &str) -> Browser {
        Browser::launch(Some(languages))
    }

    fn launch(languages: Option<&str>) -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            runtime,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(status) = browser.call("GET", "/status", None) {
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1280,900".to_string(),
        ];
        let mut options = json!({ "binary": CHROMIUM });
        if let Some(languages) = languages {
            let first = languages.split(',').next().unwrap_or(languages);
            args.push(format!("--lang={first}"));
            args.push(format!("--accept-lang={languages}"));
            options["prefs"] = json!({ "intl.accept_languages": languages });
        }
        options["args"] = json!(args);
        let created = browser
            .call(
                "POST",
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "browserName": "chrome",
                        "acceptInsecureCerts": true,
                        "goog:chromeOptions": options,
                    }},
                })),
            )
            .expect("a browser session");
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command. Errors are WebDriver's own replies.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string());
        let reply = self
            .runtime
            .block_on(http::send(
                &Endpoint::plain(self.addr),
                Request {
                    body: body.as_deref(),
                    ..Request::new(method, path)
                },
                COMMAND_TIMEOUT,
            ))
            .map_err(|e| format!("{e:#}"))?;
        let value: Value =
            serde_json::from_str(&reply.body).map_err(|e| format!("{e}: {}", reply.body))?;
        if reply.status >= 400 {
            return Err(value["value"].to_string());
        }
        Ok(value)
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))["value"]
            .clone()
    }

    /// Opens a URL.
    pub fn go(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    fn find_all(&self, using: &str, value: &str) -> Vec<Element> {
        let path = format!("/session/{}/elements", self.session);
        match self.call(
            "POST",
            &path,
            Some(json!({ "using": using, "value": value })),
        ) {
            Ok(v) => v["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_string())))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The elements a CSS selector matches now.
    pub fn all(&self, css: &str) -> Vec<Element> {
        self.find_all("css selector", css)
    }

    /// Waits for the first element matching a CSS selector.
    pub fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("an element matching {css}"), || {
            self.all(css).into_iter().next()
        })
    }

    /// Waits for the first element matching an XPath expression.
    pub fn wait_for_xpath(&self, xpath: &str) -> Element {
        self.wait_until(&format!("an element at {xpath}"), || {
            self.find_all("xpath", xpath).into_iter().next()
        })
    }

    /// Polls `probe` until it gives a value, failing the test after [`WAIT`].
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types into an element.
    pub fn type_into(&self, element: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks an element.
    pub fn click(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        );
    }

    /// An element's rendered text.
    pub fn text(&self, element: &Element) -> String {
        self.command("GET", &format!("/element/{}/text", element.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The text of the first element matching `css`, if there is one now.
    pub fn text_of(&self, css: &str) -> Option<String> {
        let path = format!("/session/{}/element", self.session);
        let found = self
            .call(
                "POST",
                &path,
                Some(json!({ "using": "css selector", "value": css })),
            )
            .ok()?;
        let id = found["value"][ELEMENT].as_str()?.to_string();
        let text = self
            .call(
                "GET",
                &format!("/session/{}/element/{id}/text", self.session),
                None,
            )
            .ok()?;
        text["value"].as_str().map(str::to_string)
    }

    /// Runs a script in the page and returns its value.
    pub fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Runs an asynchronous script: it gets a callback as its last
    /// argument and the value passed to it comes back.
    pub fn script_async(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs a script with arguments (`arguments[0]`, ...) and returns its value.
    pub fn script_with(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `source` in every page this browser opens from now on, before
    /// the page's own scripts (Chromium's DevTools command through
    /// chromedriver): a test stands in for a browser API with it.
    pub fn on_new_document(&self, source: &str) {
        self.command(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": { "source": source },
            })),
        );
    }

    /// Forgets every cookie of the current site (a session ended
    /// elsewhere, as far as the page can tell).
    pub fn delete_cookies(&self) {
        self.command("DELETE", "/cookie", None);
    }

    /// The page's current markup, as the browser holds it.
    pub fn source(&self) -> String {
        self.command("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Resizes the window (the viewport follows in headless Chromium).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// The viewport's inner size in CSS pixels.
    pub fn viewport(&self) -> (f64, f64) {
        let v = self.script("return [window.innerWidth, window.innerHeight];");
        (
            v[0].as_f64().unwrap_or_default(),
            v[1].as_f64().unwrap_or_default(),
        )
    }

    /// How the first element matching `css` is drawn now, if there is one:
    /// its box and computed style.
    pub fn rendered(&self, css: &str) -> Option<Rendered> {
        let v = self.script_with(
            "const e = document.querySelector(arguments[0]);
             if (!e) return null;
             const r = e.getBoundingClientRect();
             const s = getComputedStyle(e);
             const shown = typeof e.checkVisibility === 'function'
               ? e.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })
               : e.getClientRects().length > 0;
             return { x: r.left, y: r.top, width: r.width, height: r.height,
                      display: s.display, visibility: s.visibility, opacity: s.opacity,
                      shown };",
            json!([css]),
        );
        if v.is_null() {
            return None;
        }
        let number = |k: &str| v[k].as_f64().unwrap_or_default();
        Some(Rendered {
            x: number("x"),
            y: number("y"),
            width: number("width"),
            height: number("height"),
            display: v["display"].as_str().unwrap_or_default().to_string(),
            visibility: v["visibility"].as_str().unwrap_or_default().to_string(),
            shown: v["shown"] == true,
        })
    }

    /// Whether the first element matching `css` is really drawn: it has a
    /// box of some size, its computed style (and its ancestors') lets it
    /// show, and some of it is inside the viewport.
    pub fn is_displayed(&self, css: &str) -> bool {
        let (width, height) = self.viewport();
        self.rendered(css).is_some_and(|r| {
            r.is_drawn()
                && r.x < width
                && r.y < height
                && r.x + r.width > 0.0
                && r.y + r.height > 0.0
        })
    }

    /// Scrolls the first element matching `css` into view (as a person
    /// scrolling down to it would), if there is one.
    pub fn scroll_to(&self, css: &str) {
        self.script_with(
            "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({ block: 'nearest' });",
            json!([css]),
        );
    }

    /// An attribute of the first element matching `css`, if both exist.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.script_with(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            json!([css, name]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// Presses keys one after another, as a person at the keyboard would,
    /// into whatever has focus. Use [`KEY_ENTER`] and friends for the
    /// special keys.
    pub fn press(&self, keys: &str) {
        let mut actions = Vec::new();
        for key in keys.chars() {
            actions.push(json!({ "type": "keyDown", "value": key.to_string() }));
            actions.push(json!({ "type": "keyUp", "value": key.to_string() }));
        }
        self.command(
            "POST",
            "/actions",
            Some(json!({ "actions": [
                { "type": "key", "id": "keyboard", "actions": actions },
            ]})),
        );
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = self.command("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
