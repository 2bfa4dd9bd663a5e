// The Kotlin side of the tablet SDK, on the JVM, against a real
// baraza-server on 127.0.0.1 (started by scripts/kotlin-test, which passes
// its address, CA, data dir and users in the environment). Each case is a
// story an Android app goes through; the run prints `N passed, N failed`
// and exits non-zero if any failed.

import africa.baraza.sdk.*
import java.io.File
import java.net.ServerSocket
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

fun env(name: String): String = System.getenv(name) ?: error("$name is not set (run scripts/kotlin-test)")

val serverUrl = env("BARAZA_URL")
val caPem = File(env("BARAZA_CA")).readText()
val serverData = env("BARAZA_DATA")
val serverBin = env("BARAZA_SERVER_BIN")
val liaison = env("BARAZA_LIAISON")
val liaisonPassword = env("BARAZA_LIAISON_PASSWORD")
val colleague = env("BARAZA_COLLEAGUE")
val colleaguePassword = env("BARAZA_COLLEAGUE_PASSWORD")
val area = env("BARAZA_AREA")
val work: File = Files.createTempDirectory("baraza-kotlin-").toFile()

fun newKey(seed: Int): ByteArray = ByteArray(32) { (it * 7 + seed).toByte() }

class Failure(message: String) : Exception(message)

fun expect(condition: Boolean, what: () -> String) {
    if (!condition) throw Failure(what())
}

/** Records every event a sync sends, for the cases to look through. */
class Recorder : SyncListener {
    val events = CopyOnWriteArrayList<SyncProgress>()
    override fun onEvent(event: SyncProgress) {
        events.add(event)
    }
}

suspend fun waitUntil(what: String, limitMs: Long = 20_000, condition: () -> Boolean) {
    val deadline = System.currentTimeMillis() + limitMs
    while (!condition()) {
        if (System.currentTimeMillis() > deadline) throw Failure("timed out waiting until $what")
        delay(50)
    }
}

fun field(view: RecordView, name: String): FieldView =
    view.fields.firstOrNull { it.name == name } ?: throw Failure("no field $name in ${view.fields.map { it.name }}")

fun items(value: FieldValue): List<FieldValue> =
    (value as? FieldValue.ListValue)?.items ?: throw Failure("not a list: $value")

fun entry(value: FieldValue, key: String): FieldValue? =
    (value as? FieldValue.MapValue)?.entries?.firstOrNull { it.key == key }?.value

fun serverCommand(vararg args: String): String {
    val process = ProcessBuilder(serverBin, *args, "--data", serverData)
        .redirectErrorStream(false)
        .start()
    if (!process.waitFor(30, TimeUnit.SECONDS)) {
        process.destroyForcibly()
        throw Failure("baraza-server ${args.joinToString(" ")} did not finish")
    }
    val out = process.inputStream.bufferedReader().readText()
    val err = process.errorStream.bufferedReader().readText()
    if (process.exitValue() != 0) throw Failure("baraza-server ${args.joinToString(" ")} failed: $err")
    return out
}

var passed = 0
var failed = 0

fun case(name: String, body: suspend () -> Unit) {
    val started = System.currentTimeMillis()
    try {
        runBlocking { withTimeout(60_000) { body() } }
        passed++
        println("ok    $name (${System.currentTimeMillis() - started} ms)")
    } catch (e: Throwable) {
        failed++
        println("FAIL  $name: $e")
        if (e !is Failure) e.printStackTrace(System.out)
    }
}

fun main() {
    val dir1 = File(work, "tablet-1").path
    val dir2 = File(work, "tablet-2").path
    val key1 = newKey(1)
    var t1: Tablet? = null
    var t2: Tablet? = null
    var meeting = ""

    case("a key that is not 32 bytes is refused, naming the key") {
        try {
            Tablet.open(File(work, "short-key").path, ByteArray(16))
            throw Failure("a 16-byte key was accepted")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field == "key") { "field ${e.field}" }
        }
    }

    case("a tablet opens with a key from the keystore and enrols with a user's password") {
        val tablet = Tablet.open(dir1, key1)
        t1 = tablet
        val enrolment = tablet.enroll(serverUrl, caPem, liaison, liaisonPassword, "Kibera tablet 1")
        expect(enrolment.user == liaison) { "enrolled as ${enrolment.user}" }
        expect(enrolment.areas == listOf(area)) { "areas ${enrolment.areas}" }
        expect(!enrolment.reenrolled) { "a new store was re-enrolled" }
        expect((enrolment.expiresAtMs ?: 0u) > System.currentTimeMillis().toULong()) { "expires ${enrolment.expiresAtMs}" }
        val status = tablet.status()
        expect(status.deviceId == enrolment.deviceId) { "status device ${status.deviceId}" }
        expect(status.user == liaison && status.area == area) { "status $status" }
        expect(status.records == 0uL) { "records ${status.records}" }
    }

    case("a wrong password is refused as unauthorised (login), changing nothing") {
        val tablet = Tablet.open(File(work, "wrong-password").path, newKey(9))
        try {
            tablet.enroll(serverUrl, caPem, liaison, "not the password 1", "Wrong tablet")
            throw Failure("a wrong password enrolled")
        } catch (e: TabletException.Unauthorised) {
            expect(e.reasonCode == "login") { "reason ${e.reasonCode}" }
        }
        expect(tablet.status().deviceId == null) { "a device was set up" }
        tablet.close()
    }

    case("a meeting with attendees and a concern is recorded offline") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        meeting = tablet.createMeeting("Market baraza", "Market hall", 1_780_000_000_000)
        expect(tablet.addAttendee(meeting, "Mzee Otieno", "elder") == 0uL) { "first attendee position" }
        expect(tablet.addAttendee(meeting, "Mama Akinyi", null) == 1uL) { "second attendee position" }
        tablet.addConcern(meeting, "lighting", "Street lights out on the market road", "Mama Akinyi")
        tablet.splice(meeting, "notes", 0u, 0u, "Residents raised street lighting.")
        val view = tablet.record(meeting)
        expect(view.kind == RecordKind.MEETING && view.area == area) { "kind ${view.kind} area ${view.area}" }
        expect(view.createdByUser == liaison) { "created by ${view.createdByUser}" }
        val attendees = items(field(view, "attendees").value)
        expect(attendees.size == 2) { "attendees $attendees" }
        expect(entry(attendees[0], "name") == FieldValue.Str("Mzee Otieno")) { "first attendee ${attendees[0]}" }
        expect(entry(attendees[0], "role") == FieldValue.Str("elder")) { "role ${attendees[0]}" }
        val concern = items(field(view, "concerns").value).single()
        expect(entry(concern, "topic") == FieldValue.Str("lighting")) { "concern $concern" }
        expect(field(view, "held_at").value == FieldValue.Time(1_780_000_000_000)) { "held_at ${field(view, "held_at").value}" }
        expect(field(view, "notes").value == FieldValue.Text("Residents raised street lighting.")) { "notes" }
        expect(field(view, "notes").isText) { "notes is not text" }
        expect(view.unacknowledged && view.reviewState == ReviewState.DRAFT) { "state ${view.reviewState}" }
        val now = System.currentTimeMillis()
        expect(view.history.all { it.user == liaison && it.timeMs in (now - 60_000)..(now + 1_000) }) { "history ${view.history}" }
        expect(tablet.status().unacknowledged == 1uL) { "unacknowledged ${tablet.status().unacknowledged}" }
        val listed = tablet.list(RecordFilter(kind = RecordKind.MEETING, unsyncedOnly = true))
        expect(listed.map { it.id } == listOf(meeting) && listed[0].title == "Market baraza") { "listed $listed" }
        expect(tablet.list(RecordFilter(kind = RecordKind.FEEDBACK)).isEmpty()) { "feedback listed" }
    }

    case("a field the meeting does not have is refused, naming it") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        try {
            tablet.setField(meeting, "titel", "Baraza")
            throw Failure("titel was set")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field == "titel") { "field ${e.field}" }
        }
        try {
            tablet.addItem(meeting, "attendees", listOf(FieldEntry("nme", "x")))
            throw Failure("attendees.nme was added")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field == "attendees.nme") { "field ${e.field}" }
        }
    }

    case("sync sends it, and a second tablet receives it whole") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        val before = System.nanoTime()
        val summary = tablet.sync(null)
        val wallUs = (System.nanoTime() - before) / 1_000uL.toLong()
        expect(summary.recordsSent == 1uL && summary.unacknowledged == 0uL) { "summary $summary" }
        // The sync's own time is given, and is no more than the caller saw.
        expect(summary.elapsedUs > 0uL && summary.elapsedUs.toLong() <= wallUs) { "elapsed ${summary.elapsedUs} us of $wallUs us" }
        expect(!tablet.record(meeting).unacknowledged) { "still unacknowledged" }
        expect((tablet.status().lastSyncMs ?: 0u) > 0u) { "no last sync time" }
        val other = Tablet.open(dir2, newKey(2))
        t2 = other
        other.enroll(serverUrl, caPem, colleague, colleaguePassword, "Kibera tablet 2")
        val received = other.sync(null)
        expect(received.recordsReceived >= 1uL) { "received $received" }
        val view = other.record(meeting)
        expect(items(field(view, "attendees").value).size == 2) { "attendees on tablet 2" }
        expect(field(view, "title").value == FieldValue.Str("Market baraza")) { "title on tablet 2" }
    }

    case("both tablets change the place offline: both values are kept, with who, which device and when") {
        val a = t1 ?: throw Failure("no tablet 1")
        val b = t2 ?: throw Failure("no tablet 2")
        val before = System.currentTimeMillis()
        a.setField(meeting, "place", "Chief's camp")
        b.setField(meeting, "place", "Community hall")
        a.sync(null)
        b.sync(null)
        a.sync(null)
        val view = a.record(meeting)
        expect(field(view, "place").inConflict) { "place not in conflict" }
        val conflict = view.conflicts.firstOrNull { it.path == "place" } ?: throw Failure("no conflict in ${view.conflicts}")
        expect(conflict.values.map { it.value }.toSet() == setOf("Chief's camp", "Community hall")) { "values ${conflict.values}" }
        expect(conflict.values.map { it.user }.toSet() == setOf(liaison, colleague)) { "users ${conflict.values}" }
        expect(conflict.values.map { it.deviceName }.toSet() == setOf("Kibera tablet 1", "Kibera tablet 2")) {
            "device names ${conflict.values.map { it.deviceName }}"
        }
        expect(conflict.values.all { it.timeMs >= before - 60_000 && it.timeMs <= System.currentTimeMillis() + 1_000 }) {
            "times ${conflict.values.map { it.timeMs }}"
        }
        expect(conflict.values.count { it.winner } == 1) { "winners ${conflict.values}" }
        expect(view.history.any { it.user == colleague && "place" in it.fields }) { "tablet 2's edit not in history" }
        // Setting it again settles it, on both tablets.
        a.setField(meeting, "place", "Chief's camp")
        a.sync(null)
        b.sync(null)
        expect(b.record(meeting).conflicts.none { it.path == "place" }) { "conflict still standing on tablet 2" }
    }

    case("a citizen's feedback gets a follow-up and goes for review") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        val feedback = tablet.createFeedback("in_person", "complaint", "Noise from the bar at night")
        tablet.followUp(feedback, "acknowledged", "Spoke to the owner")
        tablet.submit(feedback)
        val summary = tablet.sync(null)
        expect(summary.unacknowledged == 0uL && summary.refused == 0uL) { "summary $summary" }
        val view = tablet.record(feedback)
        expect(view.kind == RecordKind.FEEDBACK && view.reviewState == ReviewState.SUBMITTED) { "state ${view.reviewState}" }
        expect(field(view, "status").value == FieldValue.Str("acknowledged")) { "status ${field(view, "status").value}" }
        val followUp = items(field(view, "follow_ups").value).single()
        expect(entry(followUp, "note") == FieldValue.Str("Spoke to the owner")) { "follow-up $followUp" }
        val listed = tablet.list(RecordFilter(reviewState = ReviewState.SUBMITTED))
        expect(listed.map { it.id } == listOf(feedback)) { "submitted records $listed" }
    }

    case("a change the server's rules refuse stays on the tablet, marked with the rule") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        // Liaisons may not create patrol notes (records/src/access.rs).
        val note = tablet.createPatrolNote("beat 4", null, null)
        tablet.addObservation(note, "Gate open at the depot", null, GpsPoint(-1.3127, 36.785, 8))
        val summary = tablet.sync(null)
        expect(summary.refused >= 1uL) { "summary $summary" }
        val view = tablet.record(note)
        val rejection = view.rejection ?: throw Failure("no rejection")
        expect(rejection.rule == "kind_for_role") { "rule ${rejection.rule}" }
        expect(tablet.status().refused.any { it.id == note && it.rejection.rule == "kind_for_role" }) { "status" }
        val gps = entry(items(field(view, "observations").value).single(), "gps") ?: throw Failure("no gps")
        expect(entry(gps, "accuracy_m") == FieldValue.Int(8)) { "gps $gps" }
        try {
            tablet.addObservation(note, "Nowhere", null, GpsPoint(91.0, 0.0, 5))
            throw Failure("latitude 91 accepted")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field.contains("lat")) { "field ${e.field}" }
        }
    }

    case("background sync reports progress with counts and receives a colleague's edit live") {
        val a = t1 ?: throw Failure("no tablet 1")
        val b = t2 ?: throw Failure("no tablet 2")
        val recorder = Recorder()
        val background = b.startBackground(recorder)
        try {
            b.startBackground(Recorder())
            throw Failure("a second background sync started")
        } catch (e: TabletException.AlreadyRunning) {
        }
        waitUntil("the background sync settles") { recorder.events.any { it is SyncProgress.Done } }
        a.addActionItem(meeting, "Write to the county about the lights", "liaison", null)
        a.sync(null)
        waitUntil("tablet 2 has the action item") {
            items(field(b.record(meeting), "action_items").value).isNotEmpty()
        }
        // An edit on tablet 2 goes out on the live connection, unasked.
        b.addAttendee(meeting, "Chief Mwangi", "chief")
        waitUntil("tablet 2's attendee is acknowledged") { !b.record(meeting).unacknowledged }
        background.stop()
        expect(!background.isRunning()) { "still running after stop" }
        val events = recorder.events
        expect(events.first() is SyncProgress.Connecting) { "first event ${events.first()}" }
        expect(events.any { it is SyncProgress.Connected }) { "no Connected" }
        val received = events.filterIsInstance<SyncProgress.ToReceive>()
        expect(received.any { it.recordsReceived >= 1uL && it.bytesReceived > 0uL }) { "ToReceive $received" }
        // Once a record came, the download has an estimated size, at least what came.
        expect(received.filter { it.recordsReceived >= 1uL }.all { (it.bytesExpected ?: 0uL) >= it.bytesReceived }) {
            "ToReceive without an estimate $received"
        }
        val sent = events.filterIsInstance<SyncProgress.ToSend>()
        expect(sent.any { it.recordsSent >= 1uL && it.bytesSent > 0uL }) { "ToSend $sent" }
        expect(events.none { it is SyncProgress.Error || it is SyncProgress.Wiped }) { "errors in $events" }
        a.sync(null)
        val attendees = items(field(a.record(meeting), "attendees").value)
        expect(attendees.any { entry(it, "name") == FieldValue.Str("Chief Mwangi") }) { "tablet 1 lacks tablet 2's attendee" }
    }

    case("a photo attached offline goes up with the sync, and the colleague's tablet fetches the same bytes") {
        val a = t1 ?: throw Failure("no tablet 1")
        val b = t2 ?: throw Failure("no tablet 2")
        // The server checks the declared type and the digest, not the content.
        val photo = ByteArray(3_000) { (it * 31 + 7).toByte() }
        val attached = a.attach(meeting, "photos", photo, "image/jpeg", "market-hall.jpg")
        expect(attached.sha256.length == 64 && attached.sizeBytes == photo.size.toULong()) { "attached $attached" }
        expect(attached.field == "photos" && attached.name == "market-hall.jpg" && attached.createdBy == liaison) { "attached $attached" }
        expect(attached.complete && attached.upload is UploadState.Pending) { "attached $attached" }
        expect(a.attachments(meeting).map { it.sha256 } == listOf(attached.sha256)) { "listed ${a.attachments(meeting)}" }
        expect(a.attachmentBytes(meeting, attached.sha256)?.contentEquals(photo) == true) { "tablet 1 lacks the bytes" }
        // Refusals name what is at fault, and attach nothing.
        val odd = File(work, "scan.bin").apply { writeBytes(photo) }
        try {
            a.attachFile(meeting, "photos", odd.path, null)
            throw Failure("a file of unknown type was attached without a type")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field == "mime") { "field ${e.field}" }
        }
        try {
            a.attach(meeting, "fotos", photo, "image/jpeg", "x.jpg")
            throw Failure("attached to fotos")
        } catch (e: TabletException.InvalidInput) {
            expect(e.field == "fotos") { "field ${e.field}" }
        }
        expect(a.attachments(meeting).size == 1) { "attachments ${a.attachments(meeting)}" }

        val recorder = Recorder()
        val summary = a.sync(recorder)
        expect(summary.attachmentsUploaded == 1uL && summary.attachmentsWaiting == 0uL && summary.attachmentsRefused == 0uL) {
            "summary $summary"
        }
        val up = recorder.events.filterIsInstance<SyncProgress.Attachment>()
        expect(up.isNotEmpty() && up.all { it.upload && it.record == meeting && it.sha256 == attached.sha256 }) { "upload events $up" }
        expect(up.last().done == up.last().total && up.last().total == photo.size.toULong()) { "last upload event ${up.last()}" }
        val uploaded = a.attachments(meeting).single()
        expect(uploaded.upload is UploadState.Uploaded && uploaded.complete) { "after sync $uploaded" }
        val again = a.uploadAttachments(null)
        expect(again.uploaded == 0uL && again.waiting == 0uL && again.bytesSent == 0uL) { "a second pass $again" }

        // Tablet 2 gets the reference with the record, the bytes on request.
        b.sync(null)
        val remote = b.attachments(meeting).singleOrNull() ?: throw Failure("tablet 2 attachments ${b.attachments(meeting)}")
        expect(remote.sha256 == attached.sha256 && remote.sizeBytes == attached.sizeBytes) { "tablet 2 $remote" }
        expect(remote.upload is UploadState.Remote && !remote.complete && remote.heldBytes == 0uL) { "tablet 2 $remote" }
        expect(b.attachmentBytes(meeting, attached.sha256) == null) { "tablet 2 holds bytes it never fetched" }
        val downloads = Recorder()
        val fetched = b.fetchAttachment(meeting, attached.sha256, downloads)
        expect(fetched.contentEquals(photo)) { "fetched ${fetched.size} bytes, not the photo" }
        val down = downloads.events.filterIsInstance<SyncProgress.Attachment>()
        expect(down.isNotEmpty() && down.none { it.upload } && down.last().done == down.last().total) { "download events $down" }
        val held = b.attachments(meeting).single()
        expect(held.complete && held.heldBytes == held.sizeBytes) { "tablet 2 after the fetch $held" }
        expect(b.attachmentBytes(meeting, attached.sha256)?.contentEquals(photo) == true) { "tablet 2 did not keep the bytes" }

        // A file is attached under its name, typed by its extension; a
        // deleted attachment leaves the record and is never uploaded.
        val sheet = File(work, "sign-in-sheet.png").apply { writeBytes(byteArrayOf(1, 2, 3, 4)) }
        val scanned = b.attachFile(meeting, "photos", sheet.path, null)
        expect(scanned.mime == "image/png" && scanned.name == "sign-in-sheet.png" && scanned.sizeBytes == 4uL) { "scanned $scanned" }
        b.deleteAttachment(meeting, scanned.sha256)
        expect(b.attachments(meeting).map { it.sha256 } == listOf(attached.sha256)) { "after delete ${b.attachments(meeting)}" }
        expect(b.attachmentBytes(meeting, scanned.sha256) == null) { "the deleted attachment's bytes stayed" }
        val afterDelete = b.sync(null)
        expect(afterDelete.attachmentsUploaded == 0uL && afterDelete.attachmentsWaiting == 0uL) { "after delete $afterDelete" }
    }

    case("a cancelled call stops at once and leaves the tablet usable") {
        val tablet = t1 ?: throw Failure("no tablet 1")
        // A port that accepts connections and never answers: the TLS
        // handshake would wait its full 10 s without the cancellation.
        ServerSocket(0, 50, java.net.InetAddress.getByName("127.0.0.1")).use { silent ->
            val fresh = Tablet.open(File(work, "cancelled").path, newKey(5))
            val started = System.currentTimeMillis()
            val result = withTimeoutOrNull(500) {
                fresh.enroll("https://127.0.0.1:${silent.localPort}", caPem, liaison, liaisonPassword, "never")
            }
            val took = System.currentTimeMillis() - started
            expect(result == null) { "enrolled against a silent port: $result" }
            expect(took < 3_000) { "cancellation took $took ms" }
            fresh.close()
        }
        // Tablet 1 still holds the refused patrol note, unacknowledged.
        val summary = tablet.sync(null)
        expect(summary.unacknowledged == summary.refused) { "tablet 1 after a cancellation: $summary" }
    }

    case("an unreachable server is Offline") {
        val tablet = Tablet.open(File(work, "offline").path, newKey(6))
        val port = ServerSocket(0).use { it.localPort }
        try {
            tablet.enroll("https://127.0.0.1:$port", caPem, liaison, liaisonPassword, "offline")
            throw Failure("enrolled with no server")
        } catch (e: TabletException.Offline) {
        }
        tablet.close()
    }

    case("a revoked tablet wipes its store at its next sync and reports what went") {
        val lost = Tablet.open(File(work, "lost").path, newKey(3))
        val enrolment = lost.enroll(serverUrl, caPem, liaison, liaisonPassword, "Lost tablet")
        val synced = lost.createMeeting("Synced before the loss", null, null)
        lost.sync(null)
        val unsent = lost.createMeeting("Written after the last sync", null, null)
        serverCommand("device", "revoke", "--id", enrolment.deviceId)
        try {
            lost.sync(null)
            throw Failure("a revoked tablet synced")
        } catch (e: TabletException.Revoked) {
            expect(e.report.reason == "revoked") { "reason ${e.report.reason}" }
            expect(synced in e.report.records && unsent in e.report.records) { "records ${e.report.records}" }
            expect(e.report.unacknowledged == listOf(unsent)) { "unacknowledged ${e.report.unacknowledged}" }
        }
        expect(lost.list(RecordFilter()).isEmpty()) { "records left after the wipe" }
        lost.close()
    }

    case("the store opened with another key is refused and left as it was") {
        t1?.close()
        t1 = null
        try {
            Tablet.open(dir1, newKey(42))
            throw Failure("opened with the wrong key")
        } catch (e: TabletException.WrongKey) {
        }
        val again = Tablet.open(dir1, key1)
        t1 = again
        expect(again.list(RecordFilter()).any { it.id == meeting }) { "the meeting is gone" }
    }

    t1?.close()
    t2?.close()
    work.deleteRecursively()
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
