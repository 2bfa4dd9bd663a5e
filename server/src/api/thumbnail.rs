//! Thumbnails of attached photos for the review desk, made on the server
//! (a tablet's CPU and battery are not spent on them), bounded in what a
//! hostile image may cost to decode, and kept for the photos looked at
//! most recently.

use std::io::Cursor;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use image::ImageReader;

/// The longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 320;
/// Thumbnails kept.
const KEPT: usize = 256;
/// What decoding one photo may allocate: a 24-megapixel photo decodes to
/// about 72 MB of pixels; anything larger is not a tablet's photo.
const DECODE_BYTES_MAX: u64 = 96 << 20;
/// The largest side a photo may claim before it is decoded.
const SIDE_MAX: u32 = 12_000;

/// Media types a thumbnail is made of.
pub fn can_thumbnail(mime: &str) -> bool {
    matches!(mime, "image/jpeg" | "image/png" | "image/webp")
}

/// A JPEG at most [`THUMB_SIDE`] on its longest side, from the bytes of a
/// photo; None if they do not decode as an image within the bounds.
pub fn make(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    limits.max_image_width = Some(SIDE_MAX);
    limits.max_image_height = Some(SIDE_MAX);
    reader.limits(limits);
    let image = reader.decode().ok()?;
    let thumb = image.thumbnail(THUMB_SIDE, THUMB_SIDE).into_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&thumb)
        .ok()?;
    Some(out)
}

/// Thumbnails by the digest of their photo.
pub struct Thumbnails {
    kept: Mutex<lru::LruCache<[u8; 32], Arc<Vec<u8>>>>,
}

impl Default for Thumbnails {
    fn default() -> Self {
        Thumbnails {
            kept: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl Thumbnails {
    /// The thumbnail of `digest`, made from `bytes()` if not kept.
    /// Blocking (it decodes).
    pub fn get(
        &self,
        digest: &[u8; 32],
        bytes: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<Arc<Vec<u8>>> {
        if let Some(kept) = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Some(kept.clone());
        }
        let made = Arc::new(make(&bytes()?)?);
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(*digest, made.clone());
        Some(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_photo_is_shrunk_to_a_jpeg_and_garbage_is_not() {
        let photo = image::RgbImage::from_fn(1600, 900, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut png = Vec::new();
        photo
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let thumb = make(&png).unwrap();
        let back = image::load_from_memory(&thumb).unwrap();
        assert_eq!((back.width(), back.height()), (320, 180));
        assert_eq!(&thumb[..2], &[0xff, 0xd8], "a JPEG");
        assert!(make(b"not a photo at all").is_none());
    }
}
