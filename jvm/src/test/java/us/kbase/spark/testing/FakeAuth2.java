package us.kbase.spark.testing;

import java.io.File;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;

/**
 * The fake Auth2 server (the {@code fake-auth2} binary) run as a subprocess, with its control API.
 * The binary's path comes from the system property {@value #BIN_PROPERTY}.
 */
public final class FakeAuth2 implements AutoCloseable {

    public static final String BIN_PROPERTY = "fakeAuth2.bin";
    /** With {@link #CONTROL_URL_PROPERTY}: a fake already running outside this JVM, see {@link #startOrAttach()}. */
    public static final String URL_PROPERTY = "fakeAuth2.url";
    public static final String CONTROL_URL_PROPERTY = "fakeAuth2.controlUrl";
    private static final Duration START_DEADLINE = Duration.ofSeconds(30);
    private static FakeAuth2 shared;

    private final Process process;
    private final Path workDir;
    private final Thread shutdownHook;
    private final HttpClient http = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();
    /** Auth2 root URL, ending in '/'. */
    public final String url;
    public final String controlUrl;

    private FakeAuth2(Process process, Path workDir, Thread shutdownHook, String url, String controlUrl) {
        this.process = process;
        this.workDir = workDir;
        this.shutdownHook = shutdownHook;
        this.url = url;
        this.controlUrl = controlUrl;
    }

    /**
     * The fake shared by the JUnit classes of one test JVM: started on first use, stopped when the
     * JVM exits (and by itself after an hour at most). Tests that set a fault set it back to
     * {@code none}; counts are per token, so tests use fresh tokens or compare before/after.
     */
    public static synchronized FakeAuth2 shared() {
        if (shared == null || !shared.process.isAlive()) {
            try {
                shared = start(3600);
            } catch (IOException e) {
                throw new IllegalStateException("cannot start the fake Auth2: " + e, e);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while starting the fake Auth2", e);
            }
        }
        return shared;
    }

    /**
     * The fake named by {@value #URL_PROPERTY} and {@value #CONTROL_URL_PROPERTY} when they are set,
     * else {@link #start()}. A JVM in another root file system, or under emulation, cannot run the
     * host's binary, so its launcher starts the fake; closing an attached fake leaves it running.
     */
    public static FakeAuth2 startOrAttach() throws IOException, InterruptedException {
        String url = System.getProperty(URL_PROPERTY);
        String controlUrl = System.getProperty(CONTROL_URL_PROPERTY);
        if (url == null || controlUrl == null) {
            return start();
        }
        return new FakeAuth2(null, null, null, url.endsWith("/") ? url : url + "/", controlUrl.replaceAll("/+$", ""));
    }

    /** Starts the binary on ephemeral loopback ports and waits (bounded) until it is listening. */
    public static FakeAuth2 start() throws IOException, InterruptedException {
        return start(600);
    }

    private static FakeAuth2 start(int maxLifetimeSecs) throws IOException, InterruptedException {
        String bin = System.getProperty(BIN_PROPERTY);
        if (bin == null || !new File(bin).canExecute()) {
            throw new IllegalStateException("fake Auth2 binary not found: set -D" + BIN_PROPERTY
                    + "=PATH (gradle builds it with: cargo build -p fake-auth2 --bin fake-auth2); got " + bin);
        }
        Path dir = Files.createTempDirectory("fake-auth2-");
        Path ready = dir.resolve("ready.json");
        Process p = new ProcessBuilder(bin, "--port", "0", "--control-port", "0",
                "--ready-file", ready.toString(), "--max-lifetime-secs", String.valueOf(maxLifetimeSecs))
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("output.log").toFile())
                .start();
        Thread hook = new Thread(p::destroyForcibly, "fake-auth2-stopper");
        Runtime.getRuntime().addShutdownHook(hook);
        long deadline = System.nanoTime() + START_DEADLINE.toNanos();
        while (true) {
            if (Files.exists(ready)) {
                try {
                    JsonObject r = JsonParser.parseString(Files.readString(ready)).getAsJsonObject();
                    String url = r.get("url").getAsString();
                    return new FakeAuth2(p, dir, hook, url.endsWith("/") ? url : url + "/",
                            r.get("control_url").getAsString().replaceAll("/+$", ""));
                } catch (RuntimeException partiallyWritten) {
                    // retry until the deadline
                }
            }
            if (!p.isAlive()) {
                throw new IllegalStateException("fake Auth2 exited with " + p.exitValue() + ": " + output(dir));
            }
            if (System.nanoTime() > deadline) {
                p.destroyForcibly();
                throw new IllegalStateException("fake Auth2 not ready within " + START_DEADLINE + ": " + output(dir));
            }
            Thread.sleep(20);
        }
    }

    private static String output(Path dir) {
        try {
            return Files.readString(dir.resolve("output.log"));
        } catch (IOException e) {
            return "(no output: " + e + ")";
        }
    }

    /** Registers a token for {@code user}, valid for an hour, with Auth2's usual cachefor of 5 minutes. */
    public void addToken(String token, String user) throws IOException, InterruptedException {
        addToken(token, user, 3_600_000L, "Used", List.of(), 300_000L);
    }

    public void addToken(String token, String user, long expiresInMs, String mfa, List<String> customRoles,
            long cacheForMs) throws IOException, InterruptedException {
        JsonObject o = new JsonObject();
        o.addProperty("token", token);
        o.addProperty("user", user);
        o.addProperty("expires_in_ms", expiresInMs);
        if (mfa != null) {
            o.addProperty("mfa", mfa);
        }
        JsonArray roles = new JsonArray();
        customRoles.forEach(roles::add);
        o.add("customroles", roles);
        o.addProperty("cachefor", cacheForMs);
        post("/tokens", o);
    }

    public void revoke(String token) throws IOException, InterruptedException {
        JsonObject o = new JsonObject();
        o.addProperty("token", token);
        post("/revoke", o);
    }

    /**
     * Sets the fault mode: none, refuse, delay, status503, html502, malformed, nouser, ignore_expiry,
     * status400html, status400json, drop_token, redirect (see {@code fake-auth2 --help}).
     */
    public void fault(String mode) throws IOException, InterruptedException {
        fault(mode, 0);
    }

    public void fault(String mode, long delayMs) throws IOException, InterruptedException {
        JsonObject o = new JsonObject();
        o.addProperty("mode", mode);
        if (delayMs > 0) {
            o.addProperty("delay_ms", delayMs);
        }
        post("/fault", o);
    }

    /** Total Auth2 token requests since start or the last {@link #reset()}. */
    public long totalRequests() throws IOException, InterruptedException {
        return counts().get("total").getAsLong();
    }

    /** Auth2 requests made with {@code token}. */
    public long requestsFor(String token) throws IOException, InterruptedException {
        JsonObject by = counts().getAsJsonObject("by_token");
        return by != null && by.has(token) ? by.get(token).getAsLong() : 0;
    }

    public JsonObject counts() throws IOException, InterruptedException {
        return JsonParser.parseString(send(HttpRequest.newBuilder(URI.create(controlUrl + "/counts")).GET()))
                .getAsJsonObject();
    }

    /** Requests the redirect target (where the {@code redirect} fault points) has received. */
    public long redirectedRequests() throws IOException, InterruptedException {
        return counts().get("redirected").getAsLong();
    }

    /** Resets the request counters. */
    public void reset() throws IOException, InterruptedException {
        post("/reset", new JsonObject());
    }

    private void post(String path, JsonObject body) throws IOException, InterruptedException {
        send(HttpRequest.newBuilder(URI.create(controlUrl + path))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body.toString(), StandardCharsets.UTF_8)));
    }

    private String send(HttpRequest.Builder request) throws IOException, InterruptedException {
        HttpResponse<String> r = http.send(request.timeout(Duration.ofSeconds(10)).build(),
                HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw new IOException("fake Auth2 control " + r.request().uri() + " -> " + r.statusCode() + ": " + r.body());
        }
        return r.body();
    }

    @Override
    public void close() {
        if (process == null) {
            return;
        }
        process.destroy();
        try {
            if (!process.waitFor(5, TimeUnit.SECONDS)) {
                process.destroyForcibly();
                process.waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
        try {
            Runtime.getRuntime().removeShutdownHook(shutdownHook);
        } catch (IllegalStateException shuttingDown) {
            // the hook runs anyway
        }
        try (var files = Files.list(workDir)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                Files.deleteIfExists(f);
            }
            Files.deleteIfExists(workDir);
        } catch (IOException ignored) {
            // a leftover temp directory is harmless
        }
    }
}
