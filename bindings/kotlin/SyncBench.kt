// S1 through the Kotlin binding: tablet A holds N synced meetings; tablet
// B edits E of them and syncs; A edits E others offline and reconnects
// with one `sync()`, timed. bindings/kotlin/bench runs this and the same
// steps in Rust (bindings/examples/s1_sync.rs) against one server.

import africa.baraza.sdk.*
import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.runBlocking

fun env(name: String): String = System.getenv(name) ?: error("$name is not set (run bindings/kotlin/bench)")

fun main() = runBlocking {
    val records = env("BENCH_RECORDS").toInt()
    val edits = env("BENCH_EDITS").toInt()
    val rounds = env("BENCH_ROUNDS").toInt()
    val url = env("BARAZA_URL")
    val ca = File(env("BARAZA_CA")).readText()
    val work = Files.createTempDirectory("baraza-kotlin-bench-").toFile()
    val a = Tablet.open(File(work, "a").path, ByteArray(32) { 1 })
    val b = Tablet.open(File(work, "b").path, ByteArray(32) { 2 })
    a.enroll(url, ca, env("BENCH_USER_A"), env("BENCH_PASSWORD"), "kotlin bench A")
    b.enroll(url, ca, env("BENCH_USER_B"), env("BENCH_PASSWORD"), "kotlin bench B")
    var t = System.nanoTime()
    val ids = (0 until records).map { a.createMeeting("Kotlin bench meeting $it", "Hall $it", null) }
    System.err.println("kotlin: $records creates in ${(System.nanoTime() - t) / 1_000_000} ms")
    t = System.nanoTime()
    a.sync(null)
    b.sync(null)
    System.err.println("kotlin: upload and B's cold start in ${(System.nanoTime() - t) / 1_000_000} ms")
    val times = mutableListOf<Double>()
    for (round in 0 until rounds) {
        ids.filterIndexed { i, _ -> i % 2 == 0 }.take(edits).forEach { b.setField(it, "place", "B r$round") }
        b.sync(null)
        ids.filterIndexed { i, _ -> i % 2 == 1 }.take(edits).forEach { a.setField(it, "place", "A r$round") }
        val start = System.nanoTime()
        val summary = a.sync(null)
        val ms = (System.nanoTime() - start) / 1e6
        check(summary.unacknowledged == 0uL) { "left ${summary.unacknowledged} unacknowledged" }
        times.add(ms)
        val inner = summary.elapsedUs.toDouble() / 1e3
        System.err.println("kotlin: round $round sync ${"%.1f".format(ms)} ms inner ${"%.1f".format(inner)} ms (sent ${summary.recordsSent}, received ${summary.recordsReceived})")
    }
    a.close()
    b.close()
    work.deleteRecursively()
    val sorted = times.sorted()
    println("kotlin s1 records=$records edits=$edits median_ms=${"%.1f".format(sorted[sorted.size / 2])} min_ms=${"%.1f".format(sorted.first())}")
}
