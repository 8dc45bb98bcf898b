package us.kbase.spark;

import java.io.IOException;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.List;
import java.util.TreeSet;
import java.util.jar.JarFile;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

import org.apache.spark.connect.proto.ConfigRequest;
import org.apache.spark.connect.proto.UserContext;
import org.sparkproject.connect.grpc.Metadata;
import org.sparkproject.connect.grpc.Status;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.LogCapture;
import us.kbase.spark.testing.RecordingHandler;
import us.kbase.spark.testing.RecordingServerCall;
import us.kbase.spark.testing.Tokens;

/**
 * Run by {@code gradle smokeTest} in a fresh JVM whose classpath has the built jar and Spark's
 * jars: proves that the interceptor, created the way Spark creates it, loads the library embedded
 * in the jar and decides calls. Exits non-zero on any surprise. Gradle runs it once per platform
 * and glibc it checks (see build.gradle's smoke tasks), naming what to expect with
 * {@value #PLATFORM_PROPERTY} and {@value #GLIBC_PROPERTY}.
 */
public final class SmokeMain {

    /** The jar's platform directory this JVM must load from, e.g. {@code linux-aarch64}. */
    static final String PLATFORM_PROPERTY = "smoke.platform";
    /** The glibc version this JVM must run on, e.g. {@code 2.31}; unchecked when unset. */
    static final String GLIBC_PROPERTY = "smoke.glibc";

    private SmokeMain() {
    }

    public static void main(String[] args) throws Exception {
        URL from = KBaseAuthServerInterceptor.class.getProtectionDomain().getCodeSource().getLocation();
        check(from.getPath().endsWith(".jar"), "the interceptor must come from the built jar, not " + from);
        check(System.getProperty(NativeAuth.LIBRARY_PROPERTY) == null && System.getenv(NativeAuth.LIBRARY_ENV) == null,
                "the smoke test must use the embedded library, not an override");
        try (FakeAuth2 fake = FakeAuth2.startOrAttach()) {
            String token = Tokens.newToken();
            fake.addToken(token, "alice");
            fake.addToken(Tokens.newToken(), "bob");
            System.setProperty("spark.kbase.auth.url", fake.url);
            System.setProperty("spark.kbase.auth.owner", "alice");
            KBaseAuthServerInterceptor interceptor;
            String startup;
            try (LogCapture log = new LogCapture()) {
                interceptor = new KBaseAuthServerInterceptor();
                startup = log.text();
            }
            System.out.println("interceptor from " + from + ": " + interceptor);
            checkPlatform();
            checkPlatformsNamed(from, startup);

            Metadata headers = new Metadata();
            headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
            RecordingServerCall allowed = new RecordingServerCall();
            RecordingHandler handler = new RecordingHandler();
            interceptor.interceptCall(allowed, headers, handler);
            check(handler.reached() == 1 && allowed.closeCount() == 0, "the owner's token must be allowed");
            System.out.println("decision for the owner's token: allow");

            RecordingServerCall denied = new RecordingServerCall();
            interceptor.interceptCall(denied, new Metadata(), handler);
            check(denied.status() != null && denied.status().getCode() == Status.Code.UNAUTHENTICATED,
                    "a call without a token must be UNAUTHENTICATED, got " + denied.status());
            System.out.println("decision without a token: " + denied.status().getCode() + " ("
                    + denied.status().getDescription() + ")");
            check(NativeAuth.panicProbe() == NativeAuth.INTERNAL, "panicProbe must return INTERNAL");
            exerciseEveryNativePath(fake.url, token);
            System.out.println("metrics: " + interceptor.metrics());
            interceptor.close();
        }
        System.out.println("SMOKE OK");
    }

    /**
     * Calls every native method once more, the exception-throwing paths included, so that
     * -Xcheck:jni (which the smokeTest task runs with, failing on any warning) sees them all.
     */
    private static void exerciseEveryNativePath(String url, String ownerToken) {
        try {
            new KBaseAuthServerInterceptor(java.util.Map.of("spark.kbase.auth.url", "::not a url",
                    "spark.kbase.auth.owner", "alice"));
            check(false, "a bad URL must be rejected");
        } catch (IllegalArgumentException expected) {
            System.out.println("bad configuration rejected: " + expected.getMessage());
        }
        KBaseAuthServerInterceptor trusting = new KBaseAuthServerInterceptor(java.util.Map.of(
                "spark.kbase.auth.url", url, "spark.kbase.auth.owner", "alice",
                "spark.kbase.auth.trustedAddresses", "127.0.0.1"));
        RecordingHandler handler = new RecordingHandler();
        trusting.interceptCall(new RecordingServerCall(), new Metadata(), handler);
        check(handler.reached() == 1, "a token-less call from a trusted address must be allowed");
        Metadata bad = new Metadata();
        bad.put(Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER), "has space");
        RecordingServerCall malformed = new RecordingServerCall();
        trusting.interceptCall(malformed, bad, handler);
        check(malformed.status() != null && malformed.status().getCode() == Status.Code.UNAUTHENTICATED,
                "a malformed token must be UNAUTHENTICATED");
        String[] lines = NativeAuth.lastLogLines();
        check(lines != null && lines.length == 1 && !lines[0].isEmpty(), "a denial has a log line");
        Metadata repeated = new Metadata();
        Metadata.Key<String> authorization = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
        repeated.put(authorization, "Bearer first");
        repeated.put(authorization, "Bearer second");
        RecordingServerCall ambiguous = new RecordingServerCall();
        trusting.interceptCall(ambiguous, repeated, handler);
        check(ambiguous.status() != null && ambiguous.status().getCode() == Status.Code.UNAUTHENTICATED,
                "different repeated authorization values must be UNAUTHENTICATED");
        check(NativeAuth.metricNames().length == trusting.metricValues().length, "one value per counter name");
        try {
            NativeAuth.describe(0);
            check(false, "a null handle must be refused");
        } catch (IllegalStateException expected) {
            System.out.println("null handle refused: " + expected.getMessage());
        }
        check(NativeAuth.authorize(0, null, null, null, null, null) == NativeAuth.INTERNAL,
                "a null handle must deny INTERNAL");
        trusting.close();

        // userContext=require: the mode, the owner's name, and the refusal of a message naming another user.
        KBaseAuthServerInterceptor requiring = new KBaseAuthServerInterceptor(java.util.Map.of(
                "spark.kbase.auth.url", url, "spark.kbase.auth.owner", "alice", "spark.kbase.auth.userContext", "require"));
        Metadata owner = new Metadata();
        owner.put(Metadata.Key.of("x-kbase-token", Metadata.ASCII_STRING_MARSHALLER), ownerToken);
        RecordingServerCall mismatch = new RecordingServerCall();
        requiring.interceptCall(mismatch, owner, handler).onMessage(ConfigRequest.newBuilder()
                .setUserContext(UserContext.newBuilder().setUserId("mallory")).build());
        check(mismatch.status() != null && mismatch.status().getCode() == Status.Code.PERMISSION_DENIED
                && mismatch.status().getDescription().contains("user_id=alice"),
                "a message naming another user must be PERMISSION_DENIED under userContext=require, got " + mismatch.status());
        System.out.println("userContext=require refused: " + mismatch.status().getDescription());
        requiring.close();
        long h = NativeAuth.create(new String[] {"spark.kbase.auth.url", url, "spark.kbase.auth.owner", "alice"});
        try {
            NativeAuth.userName(h, 99);
            check(false, "an unknown user number must be refused");
        } catch (IllegalStateException expected) {
            System.out.println("unknown user number refused: " + expected.getMessage());
        } finally {
            NativeAuth.destroy(h);
        }
    }

    /** Checks that this JVM runs where the caller said and has mapped the library from the jar. */
    private static void checkPlatform() throws IOException {
        String resource = NativeAuth.resourcePath(System.getProperty("os.name"), System.getProperty("os.arch"));
        List<String> libc = mapped("/libc");
        List<String> library = mapped("libkbase_spark_auth");
        System.out.println("platform: os.arch=" + System.getProperty("os.arch") + ", Java "
                + System.getProperty("java.version") + " in " + System.getProperty("java.home") + ", libc " + libc
                + ", loaded " + resource + " as " + library);
        String platform = System.getProperty(PLATFORM_PROPERTY);
        check(platform == null || resource.contains("/" + platform + "/"),
                "this JVM must load the " + platform + " library, but picks " + resource);
        String glibc = System.getProperty(GLIBC_PROPERTY);
        check(glibc == null || libc.stream().anyMatch(l -> l.endsWith("/libc-" + glibc + ".so")),
                "this JVM must run on glibc " + glibc + ", but maps " + libc);
        check(!library.isEmpty(), "the native library must be mapped into this process");
    }

    /**
     * The jar's manifest names exactly the platforms whose library the jar holds, and the start-up
     * line repeats it.
     */
    private static void checkPlatformsNamed(URL jarUrl, String startupLog) throws IOException {
        String named = NativeAuth.jarPlatforms();
        System.out.println("the jar's " + NativeAuth.PLATFORMS_ATTRIBUTE + ": " + named);
        TreeSet<String> inManifest = new TreeSet<>();
        Pattern one = Pattern.compile("(linux-[a-z0-9_]+) \\(glibc >= \\d+\\.\\d+\\)");
        for (String platform : named.split(", ", -1)) {
            Matcher m = one.matcher(platform);
            check(m.matches(), "unexpected " + NativeAuth.PLATFORMS_ATTRIBUTE + ": " + named);
            inManifest.add(m.group(1));
        }
        TreeSet<String> inJar = new TreeSet<>();
        try (JarFile jar = new JarFile(jarUrl.getPath())) {
            Pattern library = Pattern.compile("us/kbase/spark/native/([^/]+)/" + Pattern.quote(NativeAuth.LIBRARY_NAME));
            jar.stream().map(e -> library.matcher(e.getName())).filter(Matcher::matches).forEach(x -> inJar.add(x.group(1)));
        }
        check(inManifest.equals(inJar), "the manifest names " + inManifest + ", the jar holds " + inJar);
        check(startupLog.contains("; native libraries in the jar: " + named + "\n"),
                "the start-up line must name the jar's libraries: " + startupLog);
    }

    /** The files mapped into this process whose path contains {@code part} (qemu-user emulates the maps file). */
    private static List<String> mapped(String part) throws IOException {
        return Files.readAllLines(Paths.get("/proc/self/maps")).stream()
                .filter(line -> line.contains("/") && line.contains(part))
                .map(line -> line.substring(line.indexOf('/')))
                .distinct()
                .collect(Collectors.toList());
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            System.out.println("SMOKE FAILED: " + what);
            System.exit(1);
        }
    }
}
