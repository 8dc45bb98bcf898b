package us.kbase.spark;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.JarURLConnection;
import java.net.URL;
import java.net.URLConnection;
import java.nio.channels.Channels;
import java.nio.file.AccessDeniedException;
import java.nio.file.DirectoryStream;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotDirectoryException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.FileAttribute;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.jar.JarFile;
import java.util.jar.Manifest;

import org.apache.spark.SparkEnv;
import org.slf4j.LoggerFactory;

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
    /** The manifest attribute naming the libraries a jar carries, written by build.gradle. */
    static final String PLATFORMS_ATTRIBUTE = "KBase-Native-Platforms";

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
     * The header values are the bytes gRPC's transport received (no {@code String} is made for
     * them), each first value with its length (saving the native side a call back into the JVM).
     * gRPC metadata may repeat a key: the first value of each key comes alone, any further values
     * as an array (null, and nothing allocated, in the usual single-valued call).
     *
     * <p>The result: {@code 1..16} denies with that gRPC status code ({@link #denialMessage},
     * {@link #lastLogLines}); {@code <= 0} allows, encoded as {@code -(2 * (user + 1) + warning)}:
     * see {@link #allowed}, {@link #verifiedUser} and {@link #warns}. So {@code 0} is a token-less
     * call from a trusted address, {@code -2} verified user number 0, {@code -3} the same with a
     * warning to log, {@code -4} user number 1, and so on.
     *
     * @param authorization       the first {@code authorization} metadata value, or null
     * @param authorizationLength its length ({@code authorization.length}; 0 for null)
     * @param moreAuthorization   further {@code authorization} values, or null
     * @param kbaseToken          the first {@code x-kbase-token} metadata value, or null
     * @param kbaseTokenLength    its length
     * @param moreKbaseTokens     further {@code x-kbase-token} values, or null
     * @param peerAddress       the remote IP address, or null (only needed when
     *                          {@link #wantsPeerAddress} is true)
     */
    static native int authorize(long handle, byte[] authorization, int authorizationLength,
            byte[][] moreAuthorization, byte[] kbaseToken, int kbaseTokenLength, byte[][] moreKbaseTokens,
            String peerAddress);

    /** {@link #authorize} for values without their lengths. */
    static int authorize(long handle, byte[] authorization, byte[][] moreAuthorization, byte[] kbaseToken,
            byte[][] moreKbaseTokens, String peerAddress) {
        return authorize(handle, authorization, authorization == null ? 0 : authorization.length, moreAuthorization,
                kbaseToken, kbaseToken == null ? 0 : kbaseToken.length, moreKbaseTokens, peerAddress);
    }

    /** Whether a status from {@link #authorize} allows the call. */
    static boolean allowed(int status) {
        return status <= 0;
    }

    /** For an allowing status: the verified user's number ({@link #userName}), or -1 when there is none. */
    static int verifiedUser(int status) {
        return (-status >>> 1) - 1;
    }

    /** For an allowing status: whether a WARN line waits in {@link #lastLogLines}. */
    static boolean warns(int status) {
        return (-status & 1) != 0;
    }

    /** {@code spark.kbase.auth.userContext}: {@link UserContextRewrite#OFF}, {@code REWRITE} or {@code REQUIRE}. */
    static native int userContextMode(long handle);

    /** The KBase user name behind a user number from {@link #authorize}; throws for any other number. */
    static native String userName(long handle, int user);

    /**
     * Records the refusal of a request message whose {@code user_context.user_id} is
     * {@code claimedUserId} although the call's token proved user number {@code user}
     * ({@code userContext=require}): counted and logged like a denial. Returns its status
     * ({@link #PERMISSION_DENIED}, or {@link #INTERNAL} on a native failure), after which
     * {@link #denialMessage} and {@link #lastLogLines} describe it. Never throws.
     */
    static native int refuseUserContext(long handle, int user, String claimedUserId);

    /** After {@link #authorize} denied on this thread: the client-facing description (no token). */
    static native String denialMessage();

    /**
     * After a denial on this thread ({@link #authorize}, {@link #refuseUserContext}), or an allow
     * that {@link #warns}: the server-log lines (fingerprints, never tokens), or null when the
     * denial log's rate limit suppressed them.
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
     * jar, extracted into a new private directory (see {@link #extractionDirs} for where) that is
     * deleted once the library is loaded. Each class loader extracts its own copy because the JVM
     * refuses to bind one library file to two loaders.
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
                    loadEmbedded(resourcePath(System.getProperty("os.name"), System.getProperty("os.arch")),
                            extractionDirs(System.getProperty(TMPDIR_PROPERTY), System.getProperty("java.io.tmpdir"),
                                    System.getenv("SPARK_LOCAL_DIRS"), sparkLocalDir(),
                                    Paths.get("").toAbsolutePath().toString()));
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

    /**
     * The directories the embedded library may be extracted to, in the order they are tried, each
     * with where it came from: {@code -Dkbase.spark.auth.tmpdir}, {@code java.io.tmpdir}, Spark's
     * local directories ({@code SPARK_LOCAL_DIRS}, then {@code spark.local.dir}; both
     * comma-separated), the working directory. Null or blank entries are left out; a directory
     * named twice is tried once, under its first source.
     */
    static Map<Path, String> extractionDirs(String tmpdirProperty, String javaIoTmpdir, String sparkLocalDirsEnv,
            String sparkLocalDir, String workingDir) {
        Map<Path, String> dirs = new LinkedHashMap<>();
        addDir(dirs, tmpdirProperty, "-D" + TMPDIR_PROPERTY);
        addDir(dirs, javaIoTmpdir, "java.io.tmpdir");
        if (sparkLocalDirsEnv != null) {
            for (String d : sparkLocalDirsEnv.split(",")) {
                addDir(dirs, d, "SPARK_LOCAL_DIRS");
            }
        }
        if (sparkLocalDir != null) {
            for (String d : sparkLocalDir.split(",")) {
                addDir(dirs, d, "spark.local.dir");
            }
        }
        addDir(dirs, workingDir, "working directory");
        return dirs;
    }

    private static void addDir(Map<Path, String> dirs, String dir, String source) {
        if (dir != null && !dir.trim().isEmpty()) {
            dirs.putIfAbsent(Paths.get(dir.trim()).toAbsolutePath().normalize(), source);
        }
    }

    /** {@code spark.local.dir} from the running SparkConf, or the system property outside Spark. */
    private static String sparkLocalDir() {
        try {
            SparkEnv env = SparkEnv.get();
            if (env != null) {
                return env.conf().get("spark.local.dir", null);
            }
        } catch (LinkageError e) {
            // No Spark classes at all: not inside Spark.
        }
        return System.getProperty("spark.local.dir");
    }

    /**
     * Extracts {@code resource} into the first usable directory of {@code dirs} and loads it.
     * A directory is unusable when no private directory can be made in it (missing, not a
     * directory, not writable), when the library cannot be written there (e.g. the file system
     * is full) or when the written library cannot be loaded from there (e.g. mounted
     * {@code noexec}). Falling back is logged as a warning naming the unusable directories.
     *
     * @return the directory the library was loaded from
     * @throws UnsatisfiedLinkError naming every directory tried and why it failed
     */
    static Path loadEmbedded(String resource, Map<Path, String> dirs) {
        if (NativeAuth.class.getResource(resource) == null) {
            throw new UnsatisfiedLinkError("this jar has no " + resource + " (it carries " + jarPlatforms()
                    + "; the project's default build holds " + SUPPORTED_PLATFORMS + "). Use such a jar, or name a "
                    + "library with -D" + LIBRARY_PROPERTY + "=FILE or " + LIBRARY_ENV);
        }
        StringBuilder tried = new StringBuilder();
        int n = 0;
        UnsatisfiedLinkError lastLoadError = null;
        for (Map.Entry<Path, String> d : dirs.entrySet()) {
            try {
                extractAndLoad(resource, d.getKey());
                if (n > 0) {
                    LoggerFactory.getLogger(NativeAuth.class).warn(
                            "KBase auth: loaded {} from {} ({}) after {} unusable director{}: {}; set -D{}=DIR to a "
                                    + "writable directory that is not mounted noexec to skip them",
                            LIBRARY_NAME, d.getKey(), d.getValue(), n, n == 1 ? "y" : "ies", tried, TMPDIR_PROPERTY);
                } else {
                    LoggerFactory.getLogger(NativeAuth.class).debug("KBase auth: loaded {} from {} ({})",
                            LIBRARY_NAME, d.getKey(), d.getValue());
                }
                return d.getKey();
            } catch (UnusableDirectory e) {
                n++;
                tried.append(n == 1 ? "" : "; ").append(n).append(") ").append(d.getKey())
                        .append(" (").append(d.getValue()).append("): ").append(e.getMessage());
                if (e.getCause() instanceof UnsatisfiedLinkError) {
                    lastLoadError = (UnsatisfiedLinkError) e.getCause();
                }
            }
        }
        UnsatisfiedLinkError e = new UnsatisfiedLinkError("cannot load the embedded " + LIBRARY_NAME + ": no usable "
                + "directory to extract it to; tried " + (n == 0 ? "none" : tried) + ". Set -D" + TMPDIR_PROPERTY
                + "=DIR to a writable directory that is not mounted noexec, or name a library with -D"
                + LIBRARY_PROPERTY + "=FILE" + libcHint());
        if (lastLoadError != null) {
            e.initCause(lastLoadError);
        }
        throw e;
    }

    /** Why one directory could not be used; the message is the reason, without the directory. */
    static final class UnusableDirectory extends Exception {
        private static final long serialVersionUID = 1L;

        UnusableDirectory(String reason, Throwable cause) {
            super(reason, cause);
        }
    }

    private static final FileAttribute<Set<PosixFilePermission>> OWNER_ONLY = PosixFilePermissions.asFileAttribute(
            EnumSet.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE,
                    PosixFilePermission.OWNER_EXECUTE));

    /**
     * In a new private directory under {@code parent}: writes the library once, loads it, and
     * removes the file and the directory again (the mapping outlives the file on Linux).
     */
    private static void extractAndLoad(String resource, Path parent) throws UnusableDirectory {
        Path dir;
        try {
            dir = createPrivateDirectory(parent);
        } catch (IOException | UnsupportedOperationException | IllegalArgumentException e) {
            // The other two: a file system without POSIX permissions or unix attributes.
            throw new UnusableDirectory("cannot create a private directory there: " + reason(e, parent), e);
        }
        Path file = dir.resolve(LIBRARY_NAME);
        try {
            try (InputStream in = NativeAuth.class.getResourceAsStream(resource)) {
                if (in == null) {
                    throw new IOException("resource " + resource + " vanished");
                }
                writeOnce(in, file);
            } catch (IOException e) {
                throw new UnusableDirectory("cannot write the library there: " + reason(e, file), e);
            }
            try {
                System.load(file.toString());
            } catch (UnsatisfiedLinkError e) {
                // The JVM and dlerror() both prefix the file's path; the directory is named anyway.
                String m = String.valueOf(e.getMessage()).replace(file + ": ", "");
                boolean noexec = m.contains("failed to map segment") || m.contains("Operation not permitted");
                throw new UnusableDirectory("System.load failed: " + m
                        + (noexec ? " (the file system is probably mounted noexec)" : ""), e);
            }
        } finally {
            try {
                Files.deleteIfExists(file);
                Files.deleteIfExists(dir);
            } catch (IOException e) {
                // Best effort: a private, empty-or-unreadable-to-others directory is all that can remain.
            }
        }
    }

    /**
     * A new directory in {@code parent} that only the owner can enter: created atomically with
     * mode 0700 (mkdir fails rather than reuse an existing name), then set to exactly 0700 in case
     * the umask took away owner bits. It is created in {@code parent}'s real path, and only if
     * that directory and every one above it, up to {@code /}, is owned by this process's user or
     * root and lets no one else write without the sticky bit: anyone else who owns or may freely
     * write one of them (a {@code java.io.tmpdir} squatted by another user, or any directory
     * above ours) could rename the new directory, or one above it, away and put their own in its
     * place before the library is loaded.
     */
    static Path createPrivateDirectory(Path parent) throws IOException {
        if (!Files.exists(parent)) {
            throw new NoSuchFileException(parent.toString(), null, "does not exist");
        }
        if (!Files.isDirectory(parent)) {
            throw new NotDirectoryException(parent.toString());
        }
        Path real = parent.toRealPath();
        checkTrusted(real, parent);
        Path dir = Files.createTempDirectory(real, "kbase-spark-auth-", OWNER_ONLY);
        Files.setPosixFilePermissions(dir, OWNER_ONLY.value());
        return dir;
    }

    /** Refuses {@code real} (the real path of {@code named}) unless only this user or root controls it and its parents. */
    private static void checkTrusted(Path real, Path named) throws IOException {
        int uid = effectiveUid();
        for (Path d = real; d != null; d = d.getParent()) {
            String where = d.equals(real) ? "" : "inside " + d + ", ";
            int owner = (Integer) Files.getAttribute(d, "unix:uid");
            if (owner != uid && owner != 0) {
                throw new FileSystemException(named.toString(), null, String.format(
                        "%sowned by uid %d, neither this user (uid %d) nor root, so not safe", where, owner, uid));
            }
            int mode = (Integer) Files.getAttribute(d, "unix:mode");
            if ((mode & 0022) != 0 && (mode & 01000) == 0) {
                throw new FileSystemException(named.toString(), null, String.format(
                        "%swritable by other users without the sticky bit (mode %04o), so not safe", where, mode & 07777));
            }
        }
    }

    private static Integer uid;

    /** This process's effective user id, from {@code /proc/self/status} (Linux: the only platform the library serves). */
    static synchronized int effectiveUid() throws IOException {
        if (uid == null) {
            for (String line : Files.readAllLines(Paths.get("/proc/self/status"))) {
                if (line.startsWith("Uid:")) {
                    uid = Integer.valueOf(line.substring(4).trim().split("\\s+")[1]);
                }
            }
            if (uid == null) {
                throw new IOException("cannot tell this process's user: no Uid line in /proc/self/status");
            }
        }
        return uid;
    }

    /**
     * Writes {@code in} to a file that must not exist yet (O_CREAT|O_EXCL, mode 0700): an
     * existing file or symbolic link is never replaced or followed. A partial file is removed.
     */
    static void writeOnce(InputStream in, Path file) throws IOException {
        boolean created = false;
        try (OutputStream out = Channels.newOutputStream(Files.newByteChannel(file,
                EnumSet.of(StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE), OWNER_ONLY))) {
            created = true;
            in.transferTo(out);
        } catch (IOException e) {
            if (created) {
                Files.deleteIfExists(file);
            }
            throw e;
        }
    }

    /** A short reason for an I/O failure: the OS's words where Java has them. */
    private static String reason(Exception e, Path subject) {
        if (e instanceof NoSuchFileException) {
            return "does not exist";
        }
        if (e instanceof NotDirectoryException) {
            return "not a directory";
        }
        if (e instanceof AccessDeniedException) {
            return "permission denied";
        }
        if (e instanceof FileSystemException && ((FileSystemException) e).getReason() != null) {
            return ((FileSystemException) e).getReason();
        }
        String m = e.getMessage();
        return e.getClass().getSimpleName() + (m == null || m.equals(subject.toString()) ? "" : ": " + m);
    }

    /**
     * The libraries the jar holding this class carries, as its manifest's {@value #PLATFORMS_ATTRIBUTE}
     * says (e.g. {@code linux-x86_64 (glibc >= 2.28), linux-aarch64 (glibc >= 2.28)}), or what is
     * known instead: this is for people reading a log, never a decision.
     */
    static String jarPlatforms() {
        URL self = NativeAuth.class.getResource(NativeAuth.class.getSimpleName() + ".class");
        try {
            URLConnection connection = self == null ? null : self.openConnection();
            if (!(connection instanceof JarURLConnection)) {
                return "unknown (not loaded from a jar)";
            }
            connection.setUseCaches(false);
            try (JarFile jar = ((JarURLConnection) connection).getJarFile()) {
                Manifest manifest = jar.getManifest();
                String platforms = manifest == null ? null : manifest.getMainAttributes().getValue(PLATFORMS_ATTRIBUTE);
                return platforms != null ? platforms : "unknown (no " + PLATFORMS_ATTRIBUTE + " in the jar's manifest)";
            }
        } catch (IOException e) {
            return "unknown (cannot read the jar's manifest: " + e + ")";
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
