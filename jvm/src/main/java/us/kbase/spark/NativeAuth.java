package us.kbase.spark;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.EnumSet;
import java.util.Locale;

/**
 * The JNI boundary: the loader of {@code libkbase_spark_auth.so} and every native method.
 *
 * <p>This class is not API. Only primitives and strings cross; the native side never calls back
 * into Java. State lives in Rust behind a {@code long} handle that {@link #create} returns and
 * {@link #destroy} releases (the caller guarantees exactly once). {@link #load()} must succeed
 * before any native method is called.
 */
final class NativeAuth {

    static final String LIBRARY_NAME = "libkbase_spark_auth.so";
    /** System property naming an exact library file to load instead of the embedded one. */
    static final String LIBRARY_PROPERTY = "kbase.spark.auth.library";
    /** Environment variable with the same meaning as {@link #LIBRARY_PROPERTY}. */
    static final String LIBRARY_ENV = "KBASE_SPARK_AUTH_LIBRARY";
    /** System property naming the directory the embedded library is extracted to. */
    static final String TMPDIR_PROPERTY = "kbase.spark.auth.tmpdir";
    static final String SUPPORTED_PLATFORMS = "linux-x86_64, linux-aarch64 (glibc >= 2.28)";

    /** What {@link #authorize} returns for an allowed call whose WARN line {@link #lastLogLines} holds. */
    static final int ALLOW_WITH_WARNING = -1;
    /** The gRPC status codes {@link #authorize} returns for a denial. */
    static final int UNAUTHENTICATED = 16;
    static final int PERMISSION_DENIED = 7;
    static final int UNAVAILABLE = 14;
    static final int INTERNAL = 13;

    private static boolean loaded;
    /** The first load failure, kept so every later attempt reports the real cause. */
    private static Throwable loadError;

    private NativeAuth() {
    }

    /**
     * Creates a native authenticator from alternating key/value pairs: Spark keys such as
     * {@code spark.kbase.auth.url}, environment names such as {@code KBASE_AUTH_URL} and
     * {@code USER}, and, for start-up warnings only, {@code spark.connect.grpc.interceptor.classes}
     * and {@code user.name}. The native side decides precedence and validates.
     *
     * @return a non-zero handle, to be released with {@link #destroy} exactly once
     * @throws IllegalArgumentException naming the bad key when the configuration is invalid
     */
    static native long create(String[] keysAndValues);

    /** Releases a handle from {@link #create}. Must be called exactly once per handle. */
    static native void destroy(long handle);

    /**
     * Decides one call. Never throws: a native error or panic comes back as {@link #INTERNAL}.
     * gRPC metadata may repeat a key: the first value of each key comes as a string, any further
     * values as an array (null, and nothing allocated, in the usual single-valued call).
     *
     * @param authorization     the first {@code authorization} metadata value, or null
     * @param moreAuthorization further {@code authorization} values, or null
     * @param kbaseToken        the first {@code x-kbase-token} metadata value, or null
     * @param moreKbaseTokens   further {@code x-kbase-token} values, or null
     * @param peerAddress       the remote IP address, or null (only needed when
     *                          {@link #wantsPeerAddress} is true)
     * @return 0 to allow; {@link #ALLOW_WITH_WARNING} to allow and log {@link #lastLogLines} at
     *         WARN; otherwise the gRPC status code to close the call with
     */
    static native int authorize(long handle, String authorization, String[] moreAuthorization, String kbaseToken,
            String[] moreKbaseTokens, String peerAddress);

    /** After {@link #authorize} denied on this thread: the client-facing description (no token). */
    static native String denialMessage();

    /**
     * After a non-zero {@link #authorize} on this thread: the server-log lines (fingerprints, never
     * tokens), or null when the denial log's rate limit suppressed them.
     */
    static native String[] lastLogLines();

    /** True when the configuration trusts listed source addresses, so the caller must pass the peer address. */
    static native boolean wantsPeerAddress(long handle);

    /** The start-up line: the plugin's version and its effective settings, without secrets. */
    static native String describe(long handle);

    /** Start-up warnings about risky configurations, one line each (possibly none). */
    static native String[] warnings(long handle);

    /** The names of the counters, in the order of {@link #metricValues}. */
    static native String[] metricNames();

    /** One snapshot of every counter. */
    static native long[] metricValues(long handle);

    /** Test hook: panics inside the native wrapper and returns what the panic became ({@link #INTERNAL}). */
    static native int panicProbe();

    /**
     * Loads the native library once per class loader: the file named by {@value #LIBRARY_PROPERTY}
     * or {@value #LIBRARY_ENV} if set (exactly that, no fallback), else the copy embedded in this
     * jar, extracted to a private temporary file that is deleted once loaded. Each class loader
     * extracts its own copy because the JVM refuses to bind one library file to two loaders.
     *
     * @throws UnsatisfiedLinkError with the first failure's message, on this and every later call
     */
    static synchronized void load() {
        if (loaded) {
            return;
        }
        if (loadError == null) {
            try {
                String explicit = System.getProperty(LIBRARY_PROPERTY);
                String source = "system property " + LIBRARY_PROPERTY;
                if (explicit == null || explicit.isEmpty()) {
                    explicit = System.getenv(LIBRARY_ENV);
                    source = "environment variable " + LIBRARY_ENV;
                }
                if (explicit != null && !explicit.isEmpty()) {
                    loadExplicit(explicit, source);
                } else {
                    loadEmbedded(resourcePath(System.getProperty("os.name"), System.getProperty("os.arch")));
                }
                loaded = true;
                return;
            } catch (Throwable t) {
                loadError = t;
            }
        }
        UnsatisfiedLinkError e = new UnsatisfiedLinkError(
                "KBase auth native library unavailable: " + loadError.getMessage());
        e.initCause(loadError);
        throw e;
    }

    /**
     * The resource holding the library for a platform.
     *
     * @throws UnsatisfiedLinkError naming the platform, the supported ones and the override
     */
    static String resourcePath(String osName, String osArch) {
        String os = osName == null ? "" : osName.toLowerCase(Locale.ROOT);
        String arch = osArch == null ? "" : osArch.toLowerCase(Locale.ROOT);
        String archDir = null;
        if (arch.equals("amd64") || arch.equals("x86_64")) {
            archDir = "x86_64";
        } else if (arch.equals("aarch64") || arch.equals("arm64")) {
            archDir = "aarch64";
        }
        if (!os.startsWith("linux") || archDir == null) {
            throw new UnsatisfiedLinkError("unsupported platform os.name=" + osName + ", os.arch=" + osArch
                    + "; this jar supports " + SUPPORTED_PLATFORMS + ". Build " + LIBRARY_NAME
                    + " for this platform and name it with -D" + LIBRARY_PROPERTY + "=FILE or " + LIBRARY_ENV);
        }
        return "/us/kbase/spark/native/linux-" + archDir + "/" + LIBRARY_NAME;
    }

    /** Loads exactly {@code path}; the error names it and where it came from. */
    static void loadExplicit(String path, String source) {
        Path file = Paths.get(path).toAbsolutePath();
        if (!Files.isRegularFile(file)) {
            throw new UnsatisfiedLinkError(file + " (from " + source + ") does not exist or is not a file");
        }
        try {
            System.load(file.toString());
        } catch (UnsatisfiedLinkError e) {
            throw withCause(new UnsatisfiedLinkError("cannot load " + file + " (from " + source + "): "
                    + e.getMessage() + libcHint()), e);
        }
    }

    private static void loadEmbedded(String resource) throws IOException {
        Path dir = Paths.get(System.getProperty(TMPDIR_PROPERTY, System.getProperty("java.io.tmpdir")));
        Path file;
        try (InputStream in = NativeAuth.class.getResourceAsStream(resource)) {
            if (in == null) {
                throw new UnsatisfiedLinkError("this jar has no " + resource + " (it holds the library for the "
                        + "platform it was built on; supported: " + SUPPORTED_PLATFORMS + "). Build the jar on this "
                        + "platform or name a library with -D" + LIBRARY_PROPERTY + "=FILE or " + LIBRARY_ENV);
            }
            file = createPrivateTempFile(dir);
            try {
                Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
            } catch (IOException e) {
                Files.deleteIfExists(file);
                throw new IOException("cannot extract " + resource + " to " + file + ": " + e.getMessage()
                        + "; choose another directory with -D" + TMPDIR_PROPERTY + "=DIR", e);
            }
        }
        try {
            System.load(file.toString());
        } catch (UnsatisfiedLinkError e) {
            throw withCause(new UnsatisfiedLinkError("cannot load " + resource + " extracted to " + file + ": "
                    + e.getMessage() + " (if " + dir + " is mounted noexec, set -D" + TMPDIR_PROPERTY + "=DIR)"
                    + libcHint()), e);
        } finally {
            // The mapping outlives the file on Linux; nothing is left behind in the directory.
            Files.deleteIfExists(file);
        }
    }

    /** A new empty file in {@code dir} that only the owner can read, write or map. */
    static Path createPrivateTempFile(Path dir) throws IOException {
        try {
            return Files.createTempFile(dir, "libkbase_spark_auth-", ".so", PosixFilePermissions.asFileAttribute(
                    EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE,
                            PosixFilePermission.OWNER_EXECUTE)));
        } catch (IOException e) {
            throw new IOException("cannot create a temporary file for " + LIBRARY_NAME + " in " + dir + ": " + e
                    + "; choose a writable directory with -D" + TMPDIR_PROPERTY + "=DIR", e);
        }
    }

    /** Explains the libc requirement, naming musl when it is what this system runs. */
    static String libcHint() {
        return isMusl(Paths.get("/lib"))
                ? "; this system uses musl libc (found /lib/ld-musl-*), but the library needs glibc >= 2.28"
                : "; the library needs Linux with glibc >= 2.28";
    }

    /** True when {@code libDir} holds a musl dynamic loader ({@code ld-musl-*}). */
    static boolean isMusl(Path libDir) {
        if (!Files.isDirectory(libDir)) {
            return false;
        }
        try (DirectoryStream<Path> musl = Files.newDirectoryStream(libDir, "ld-musl-*")) {
            return musl.iterator().hasNext();
        } catch (IOException e) {
            return false;
        }
    }

    private static UnsatisfiedLinkError withCause(UnsatisfiedLinkError e, Throwable cause) {
        e.initCause(cause);
        return e;
    }
}
