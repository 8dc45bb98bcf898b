package us.kbase.spark;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.hamcrest.CoreMatchers.containsString;
import static org.hamcrest.CoreMatchers.startsWith;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.ByteArrayInputStream;
import java.io.File;
import java.io.IOException;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import org.junit.After;
import org.junit.Assume;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.rules.Timeout;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.LogCapture;
import us.kbase.spark.testing.Tokens;

/** The loader: platform mapping, error messages, kept failures and one copy per class loader. */
public class NativeAuthLoaderTest {

    /** Isolated loaders stay reachable for the whole run, so their libraries are never unloaded mid-test. */
    private static final List<ClassLoader> KEEP = new ArrayList<>();
    private static final FakeAuth2 fake = FakeAuth2.shared();

    @Rule
    public final Timeout timeout = Timeout.seconds(60);
    @Rule
    public final TemporaryFolder tmp = new TemporaryFolder();
    /** tmpfs mounts of the running test, newest first; unmounted after it. */
    private final List<Path> mounts = new ArrayList<>();

    @Test
    public void resourcePathPerPlatform() {
        String x86 = "/us/kbase/spark/native/linux-x86_64/libkbase_spark_auth.so";
        String arm = "/us/kbase/spark/native/linux-aarch64/libkbase_spark_auth.so";
        assertEquals(x86, NativeAuth.resourcePath("Linux", "amd64"));
        assertEquals(x86, NativeAuth.resourcePath("Linux", "x86_64"));
        assertEquals(arm, NativeAuth.resourcePath("Linux", "aarch64"));
        assertEquals(arm, NativeAuth.resourcePath("Linux", "arm64"));
    }

    @Test
    public void unsupportedPlatformsAreNamed() {
        String[][] platforms = {{"Mac OS X", "aarch64"}, {"Linux", "ppc64le"}, {"Windows 11", "amd64"}};
        for (String[] p : platforms) {
            try {
                NativeAuth.resourcePath(p[0], p[1]);
                fail("accepted " + p[0] + "/" + p[1]);
            } catch (UnsatisfiedLinkError e) {
                assertThat(e.getMessage(), containsString("os.name=" + p[0]));
                assertThat(e.getMessage(), containsString("os.arch=" + p[1]));
                assertThat(e.getMessage(), containsString("linux-x86_64, linux-aarch64"));
                assertThat(e.getMessage(), containsString(NativeAuth.LIBRARY_PROPERTY));
            }
        }
    }

    @Test
    public void muslIsDetected() throws IOException {
        Path lib = tmp.newFolder("lib").toPath();
        assertFalse(NativeAuth.isMusl(lib));
        Files.createFile(lib.resolve("ld-musl-x86_64.so.1"));
        assertTrue(NativeAuth.isMusl(lib));
        assertFalse(NativeAuth.isMusl(lib.resolve("missing")));
    }

    @Test
    public void explicitPathThatDoesNotExistIsNamedAndTheFailureIsKept() throws Exception {
        String missing = tmp.getRoot() + "/nowhere/libkbase_spark_auth.so";
        Class<?> isolated = isolatedNativeAuth();
        String first;
        System.setProperty(NativeAuth.LIBRARY_PROPERTY, missing);
        try {
            first = loadError(isolated).getMessage();
        } finally {
            System.clearProperty(NativeAuth.LIBRARY_PROPERTY);
        }
        assertThat(first, containsString(missing));
        assertThat(first, containsString(NativeAuth.LIBRARY_PROPERTY));
        // The property is gone, but the first failure is what later attempts report.
        UnsatisfiedLinkError again = loadError(isolated);
        assertEquals(first, again.getMessage());
        assertNotNull("the first failure is the cause", again.getCause());
    }

    @Test
    public void explicitPathThatIsNotALibraryIsNamed() throws Exception {
        Path notElf = tmp.newFile("libnot-a-library.so").toPath();
        Files.writeString(notElf, "not an ELF file");
        Class<?> isolated = isolatedNativeAuth();
        System.setProperty(NativeAuth.LIBRARY_PROPERTY, notElf.toString());
        try {
            UnsatisfiedLinkError e = loadError(isolated);
            assertThat(e.getMessage(), containsString(notElf.toString()));
            assertThat(e.getMessage(), containsString("glibc"));
        } finally {
            System.clearProperty(NativeAuth.LIBRARY_PROPERTY);
        }
    }

    @Test
    public void explicitPathLoadsExactlyThatFile() throws Exception {
        // A private copy of the embedded library, named explicitly.
        Path copy = embeddedLibraryCopy("explicit-copy.so");
        Class<?> isolated = isolatedNativeAuth();
        System.setProperty(NativeAuth.LIBRARY_PROPERTY, copy.toString());
        try {
            invoke(isolated, "load");
        } finally {
            System.clearProperty(NativeAuth.LIBRARY_PROPERTY);
        }
        assertEquals(NativeAuth.INTERNAL, invoke(isolated, "panicProbe"));
    }

    /**
     * {@code KBASE_SPARK_AUTH_LIBRARY} names the library when the system property does not; the
     * property wins when both are set. In child JVMs, because the environment cannot be changed
     * inside this one.
     */
    @Test
    public void environmentVariableNamesTheLibraryAndThePropertyWins() throws Exception {
        Path copy = embeddedLibraryCopy("libkbase_spark_auth-env-copy.so");
        Map<String, String> out = probe(Map.of(NativeAuth.LIBRARY_ENV, copy.toString()));
        assertEquals(out.toString(), "13", out.get("panicProbe"));
        assertEquals("the child mapped exactly the named file", copy.toRealPath().toString(), out.get("mapped"));

        String missing = tmp.getRoot() + "/nowhere/libkbase_spark_auth.so";
        out = probe(Map.of(NativeAuth.LIBRARY_ENV, missing));
        assertThat(out.toString(), out.get("error"), containsString(missing));
        assertThat(out.get("error"), containsString("environment variable " + NativeAuth.LIBRARY_ENV));

        out = probe(Map.of(NativeAuth.LIBRARY_ENV, copy.toString()), "-D" + NativeAuth.LIBRARY_PROPERTY + "=" + missing);
        assertThat(out.toString(), out.get("error"), containsString(missing));
        assertThat(out.get("error"), containsString("system property " + NativeAuth.LIBRARY_PROPERTY));
    }

    private Path embeddedLibraryCopy(String name) throws IOException {
        Path copy = tmp.getRoot().toPath().resolve(name);
        try (var in = NativeAuth.class.getResourceAsStream(
                NativeAuth.resourcePath(System.getProperty("os.name"), System.getProperty("os.arch")))) {
            assertNotNull("the build puts the library into the resources", in);
            Files.copy(in, copy);
        }
        return copy;
    }

    /** Runs {@link LibraryProbeMain} in a fresh JVM with {@code env} added and its key=value output. */
    private static Map<String, String> probe(Map<String, String> env, String... jvmArgs) throws Exception {
        String classpath = Stream.of(NativeAuth.class, LibraryProbeMain.class)
                .map(c -> c.getProtectionDomain().getCodeSource().getLocation().getPath())
                .distinct()
                .collect(Collectors.joining(File.pathSeparator));
        List<String> command = new ArrayList<>();
        command.add(Paths.get(System.getProperty("java.home"), "bin", "java").toString());
        command.addAll(Arrays.asList(jvmArgs));
        command.addAll(List.of("-cp", classpath, LibraryProbeMain.class.getName()));
        ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
        pb.environment().remove(NativeAuth.LIBRARY_ENV);
        pb.environment().putAll(env);
        Process p = pb.start();
        String output;
        try (var in = p.getInputStream()) {
            output = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        assertTrue("the probe JVM did not exit in time", p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(output, 0, p.exitValue());
        Map<String, String> out = new HashMap<>();
        for (String line : output.split("\n")) {
            int eq = line.indexOf('=');
            if (eq > 0) {
                out.put(line.substring(0, eq), line.substring(eq + 1));
            }
        }
        return out;
    }

    @Test
    public void unusableTmpdirPropertyFallsBackToJavaIoTmpdir() throws Exception {
        // Through load() itself: the property names a regular file, java.io.tmpdir is usable.
        Path notADir = tmp.newFile("not-a-directory").toPath();
        Path usable = tmp.newFolder("usable-java-io-tmpdir").toPath();
        Class<?> isolated = isolatedNativeAuth();
        String savedTmpdir = System.getProperty("java.io.tmpdir");
        System.setProperty(NativeAuth.TMPDIR_PROPERTY, notADir.toString());
        System.setProperty("java.io.tmpdir", usable.toString());
        try (LogCapture log = new LogCapture()) {
            invoke(isolated, "load");
            assertThat(log.text(), containsString("from " + usable + " (java.io.tmpdir) after 1 unusable directory: 1) "
                    + notADir + " (-D" + NativeAuth.TMPDIR_PROPERTY + "): cannot create a private directory there: "
                    + "not a directory"));
        } finally {
            System.clearProperty(NativeAuth.TMPDIR_PROPERTY);
            System.setProperty("java.io.tmpdir", savedTmpdir);
        }
        assertEquals(NativeAuth.INTERNAL, invoke(isolated, "panicProbe"));
        assertEmpty(usable);
    }

    @Test
    public void eachClassLoaderGetsItsOwnCopyAndLeavesNoFile() throws Exception {
        Path dir = tmp.newFolder("extract").toPath();
        NativeAuth.load();
        Class<?> a = isolatedNativeAuth();
        Class<?> b = isolatedNativeAuth();
        assertNotSame(a, b);
        System.setProperty(NativeAuth.TMPDIR_PROPERTY, dir.toString());
        try {
            invoke(a, "load");
            invoke(b, "load");
        } finally {
            System.clearProperty(NativeAuth.TMPDIR_PROPERTY);
        }
        assertEmpty(dir);
        // The kernel's view: two copies, each from its own private directory under dir, both deleted.
        try (Stream<String> maps = Files.lines(Paths.get("/proc/self/maps"))) {
            long copies = maps.filter(l -> l.contains(dir + "/kbase-spark-auth-") && l.endsWith("/"
                    + NativeAuth.LIBRARY_NAME + " (deleted)")).map(l -> l.substring(l.indexOf('/'))).distinct().count();
            assertEquals(2, copies);
        }
        for (Class<?> c : new Class<?>[] {a, b, NativeAuth.class}) {
            assertAuthorizes(c);
        }
    }

    // ------------------------------------------------------------------------- extraction directories

    @Test
    public void extractionDirectoriesInOrder() {
        Map<Path, String> dirs = NativeAuth.extractionDirs("/x/prop", "/x/tmp/", " /x/local1, ,/x/local2,/x/tmp",
                "/x/conf1,/x/local1 , /x/conf2", "/x/cwd");
        assertEquals(Arrays.asList(
                "/x/prop=-D" + NativeAuth.TMPDIR_PROPERTY,
                "/x/tmp=java.io.tmpdir",
                "/x/local1=SPARK_LOCAL_DIRS",
                "/x/local2=SPARK_LOCAL_DIRS",
                "/x/conf1=spark.local.dir",
                "/x/conf2=spark.local.dir",
                "/x/cwd=working directory"), entries(dirs));
    }

    @Test
    public void unsetExtractionSourcesAreLeftOut() {
        assertEquals(Arrays.asList("/x/tmp=java.io.tmpdir", "/x/cwd=working directory"),
                entries(NativeAuth.extractionDirs(null, "/x/tmp", null, "", "/x/cwd")));
        // The working directory is tried once even when it is also java.io.tmpdir.
        assertEquals(Arrays.asList("/x/cwd=java.io.tmpdir"),
                entries(NativeAuth.extractionDirs(" ", "/x/cwd", ",", null, "/x/./cwd")));
    }

    @Test
    public void fallsBackPastUnusableDirectoriesInOrder() throws Exception {
        Path notADir = tmp.newFile("regular-file").toPath();
        Path missing = tmp.getRoot().toPath().resolve("no-such-parent/child");
        Path usable = tmp.newFolder("usable").toPath();
        Path later = tmp.newFolder("later").toPath();
        Map<Path, String> dirs = dirs(notADir, "-D" + NativeAuth.TMPDIR_PROPERTY, missing, "java.io.tmpdir",
                usable, "SPARK_LOCAL_DIRS", later, "working directory");
        String log = loadsFrom(usable, dirs);
        assertThat(log, containsString("WARN us.kbase.spark.NativeAuth - KBase auth: loaded libkbase_spark_auth.so from "
                + usable + " (SPARK_LOCAL_DIRS) after 2 unusable directories: "
                + "1) " + notADir + " (-D" + NativeAuth.TMPDIR_PROPERTY + "): cannot create a private directory there: "
                + "not a directory; "
                + "2) " + missing + " (java.io.tmpdir): cannot create a private directory there: does not exist; "
                + "set -D" + NativeAuth.TMPDIR_PROPERTY + "=DIR"));
        assertFalse("nothing is created where a directory is missing", Files.exists(missing));
        assertEmpty(usable);
        assertEmpty(later);
    }

    @Test
    public void directoryOthersMayWriteIsUsedOnlyWithTheStickyBit() throws Exception {
        Path open = tmp.newFolder("world-writable").toPath();
        Path sticky = tmp.newFolder("world-writable-sticky").toPath();
        Files.setAttribute(open, "unix:mode", 0777);
        Files.setAttribute(sticky, "unix:mode", 01777);
        String log = loadsFrom(sticky, dirs(open, "java.io.tmpdir", sticky, "SPARK_LOCAL_DIRS"));
        assertThat(log, containsString("after 1 unusable directory: 1) " + open + " (java.io.tmpdir): cannot create a "
                + "private directory there: writable by other users without the sticky bit (mode 0777), so not safe; set"));
        assertEmpty(open);
        assertEmpty(sticky);
    }

    /**
     * A sticky, world-writable directory owned by another user (a squatted {@code java.io.tmpdir})
     * was accepted; its owner can rename our private directory away and swap in their own before
     * {@code System.load}. So is a directory of ours inside one that another user owns. Both are
     * skipped now. Needs root (to give the directories to {@code nobody}).
     */
    @Test
    public void directoriesAnotherUserControlsAreSkipped() throws Exception {
        assumeRoot("give directories to another user");
        int nobody = 65534;
        Path squatted = tmp.newFolder("squatted").toPath();
        Files.setAttribute(squatted, "unix:mode", 01777);
        Files.setAttribute(squatted, "unix:uid", nobody);
        Path theirs = tmp.newFolder("theirs").toPath();
        Path oursInTheirs = Files.createDirectory(theirs.resolve("ours"));
        Files.setAttribute(theirs, "unix:mode", 0755);
        Files.setAttribute(theirs, "unix:uid", nobody);
        Path usable = tmp.newFolder("usable").toPath();
        String log = loadsFrom(usable, dirs(squatted, "java.io.tmpdir", oursInTheirs, "SPARK_LOCAL_DIRS",
                usable, "working directory"));
        assertThat(log, containsString("after 2 unusable directories: 1) " + squatted + " (java.io.tmpdir): cannot "
                + "create a private directory there: owned by uid 65534, neither this user (uid 0) nor root, so not "
                + "safe; 2) " + oursInTheirs + " (SPARK_LOCAL_DIRS): cannot create a private directory there: inside "
                + theirs + ", owned by uid 65534, neither this user (uid 0) nor root, so not safe; set"));
        assertEmpty(squatted);
        assertEmpty(oursInTheirs);
        assertEmpty(usable);
    }

    /** A link to a directory is judged, and used, by its real path. */
    @Test
    public void aLinkedDirectoryIsJudgedByItsTarget() throws Exception {
        assumeRoot("give a directory to another user");
        Path squatted = tmp.newFolder("squatted-target").toPath();
        Files.setAttribute(squatted, "unix:mode", 01777);
        Files.setAttribute(squatted, "unix:uid", 65534);
        Path link = Files.createSymbolicLink(tmp.getRoot().toPath().resolve("link-to-squatted"), squatted);
        Path usable = tmp.newFolder("usable").toPath();
        assertThat(loadsFrom(usable, dirs(link, "java.io.tmpdir", usable, "working directory")),
                containsString("1) " + link + " (java.io.tmpdir): cannot create a private directory there: owned by uid "
                        + "65534"));
        assertEmpty(squatted);
    }

    @Test
    public void noexecDirectoryIsSkipped() throws Exception {
        Path noexec = mountTmpfs("noexec", "noexec,size=16m");
        Path usable = tmp.newFolder("usable").toPath();
        String log = loadsFrom(usable, dirs(noexec, "java.io.tmpdir", usable, "SPARK_LOCAL_DIRS"));
        assertThat(log, containsString("after 1 unusable directory: 1) " + noexec + " (java.io.tmpdir): System.load failed: "
                + "failed to map segment from shared object (the file system is probably mounted noexec); set -D"));
        assertEmpty(noexec);
        assertEmpty(usable);
    }

    @Test
    public void fullDirectoryIsSkippedAndLeftEmpty() throws Exception {
        Path full = mountTmpfs("full", "size=64k");
        Path usable = tmp.newFolder("usable").toPath();
        String log = loadsFrom(usable, dirs(full, "java.io.tmpdir", usable, "working directory"));
        assertThat(log, containsString("1) " + full + " (java.io.tmpdir): cannot write the library there: "
                + "IOException: No space left on device"));
        assertEmpty(full);
    }

    @Test
    public void everyUnusableDirectoryIsNamedInTheError() throws Exception {
        Path notADir = tmp.newFile("regular-file").toPath();
        Path missing = tmp.getRoot().toPath().resolve("missing");
        UnsatisfiedLinkError e = embeddedLoadError(dirs(notADir, "-D" + NativeAuth.TMPDIR_PROPERTY,
                missing, "SPARK_LOCAL_DIRS"));
        assertThat(e.getMessage(), startsWith("KBase auth native library unavailable: cannot load the embedded "
                + "libkbase_spark_auth.so: no usable directory to extract it to; tried "
                + "1) " + notADir + " (-D" + NativeAuth.TMPDIR_PROPERTY + "): cannot create a private directory there: "
                + "not a directory; "
                + "2) " + missing + " (SPARK_LOCAL_DIRS): cannot create a private directory there: does not exist. "
                + "Set -D" + NativeAuth.TMPDIR_PROPERTY + "=DIR to a writable directory that is not mounted noexec, "
                + "or name a library with -D" + NativeAuth.LIBRARY_PROPERTY + "=FILE; the library needs"));
    }

    @Test
    public void mountedUnusableDirectoriesAreNamedInTheError() throws Exception {
        Path noexec = mountTmpfs("noexec", "noexec,size=16m");
        Path full = mountTmpfs("full", "size=64k");
        Path readOnly = mountTmpfs("read-only", "ro,size=1m");
        UnsatisfiedLinkError e = embeddedLoadError(dirs(readOnly, "-D" + NativeAuth.TMPDIR_PROPERTY,
                noexec, "java.io.tmpdir", full, "spark.local.dir"));
        String m = e.getMessage();
        assertThat(m, containsString("tried 1) " + readOnly + " (-D" + NativeAuth.TMPDIR_PROPERTY + "): cannot create "
                + "a private directory there: Read-only file system; 2) " + noexec + " (java.io.tmpdir): "
                + "System.load failed: failed to map segment from shared object (the file system is probably mounted "
                + "noexec); 3) " + full + " (spark.local.dir): cannot write the library there: IOException: No space "
                + "left on device. Set -D"));
        assertThat("the noexec load failure is the cause", String.valueOf(e.getCause().getCause()),
                containsString("failed to map segment"));
        assertEmpty(noexec);
        assertEmpty(full);
    }

    @Test
    public void privateDirectoryIsNewAndOwnerOnly() throws IOException {
        Path parent = tmp.getRoot().toPath();
        Path a = NativeAuth.createPrivateDirectory(parent);
        Path b = NativeAuth.createPrivateDirectory(parent);
        assertNotEquals(a, b);
        for (Path d : new Path[] {a, b}) {
            assertEquals(parent, d.getParent());
            assertTrue(Files.isDirectory(d, LinkOption.NOFOLLOW_LINKS));
            assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(d)));
            assertThat(d.getFileName().toString(), startsWith("kbase-spark-auth-"));
        }
    }

    @Test
    public void libraryIsWrittenOnceNeverReplacedOrFollowed() throws IOException {
        Path dir = tmp.newFolder("w").toPath();
        Path fresh = dir.resolve("fresh.so");
        NativeAuth.writeOnce(new ByteArrayInputStream("ELF".getBytes(UTF_8)), fresh);
        assertEquals("ELF", Files.readString(fresh));
        assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(fresh)));

        // A name that someone else got to first is never overwritten, and a link never followed.
        Path existing = Files.writeString(dir.resolve("existing.so"), "theirs");
        Path target = Files.writeString(dir.resolve("target"), "victim");
        Path link = Files.createSymbolicLink(dir.resolve("link.so"), target);
        for (Path p : new Path[] {existing, link}) {
            try {
                NativeAuth.writeOnce(new ByteArrayInputStream("ours".getBytes(UTF_8)), p);
                fail("wrote to " + p);
            } catch (FileAlreadyExistsException expected) {
                // O_CREAT|O_EXCL
            }
        }
        assertEquals("theirs", Files.readString(existing));
        assertEquals("victim", Files.readString(target));
        assertTrue(Files.isSymbolicLink(link));
    }

    @Test
    public void embeddedLibraryIsWhereTheLoaderLooks() {
        String resource = NativeAuth.resourcePath(System.getProperty("os.name"), System.getProperty("os.arch"));
        URL url = NativeAuth.class.getResource(resource);
        assertNotNull(resource, url);
        assertThat(resource, startsWith("/us/kbase/spark/native/linux-"));
    }

    // ------------------------------------------------------------------------------------------

    /** NativeAuth defined afresh by a child-first loader over the main classes, as a second webapp or session would. */
    private static Class<?> isolatedNativeAuth() throws Exception {
        URL classes = NativeAuth.class.getProtectionDomain().getCodeSource().getLocation();
        ClassLoader parent = NativeAuthLoaderTest.class.getClassLoader();
        URLClassLoader loader = new URLClassLoader(new URL[] {classes}, parent) {
            @Override
            protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
                synchronized (getClassLoadingLock(name)) {
                    if (name.startsWith("us.kbase.spark.") && findResource(name.replace('.', '/') + ".class") != null) {
                        Class<?> c = findLoadedClass(name);
                        return c != null ? c : findClass(name);
                    }
                    return super.loadClass(name, resolve);
                }
            }
        };
        KEEP.add(loader);
        Class<?> c = Class.forName(NativeAuth.class.getName(), true, loader);
        assertNotSame(NativeAuth.class, c);
        return c;
    }

    private static Object invoke(Class<?> nativeAuth, String name, Object... args) throws Exception {
        for (Method m : nativeAuth.getDeclaredMethods()) {
            if (m.getName().equals(name) && m.getParameterCount() == args.length) {
                m.setAccessible(true);
                try {
                    return m.invoke(null, args);
                } catch (InvocationTargetException e) {
                    if (e.getCause() instanceof Exception) {
                        throw (Exception) e.getCause();
                    }
                    throw (Error) e.getCause();
                }
            }
        }
        throw new NoSuchMethodException(name);
    }

    private static UnsatisfiedLinkError loadError(Class<?> nativeAuth) throws Exception {
        try {
            invoke(nativeAuth, "load");
        } catch (UnsatisfiedLinkError e) {
            return e;
        }
        fail("load() succeeded");
        return null;
    }

    /** Skips the running test, saying why, unless it runs as root. */
    private static void assumeRoot(String toDoWhat) throws IOException {
        boolean root = NativeAuth.effectiveUid() == 0;
        if (!root) {
            String why = "SKIPPED: needs root to " + toDoWhat + "; running as uid " + NativeAuth.effectiveUid();
            System.err.println(why);
            Assume.assumeTrue(why, false);
        }
    }

    /** A tmpfs mounted on a new directory, unmounted after the test; the test is skipped (with the reason) where mounting is impossible. */
    private Path mountTmpfs(String name, String options) throws Exception {
        Path dir = tmp.newFolder("mnt-" + name).toPath();
        Process p = new ProcessBuilder("mount", "-t", "tmpfs", "-o", options, "tmpfs", dir.toString())
                .redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), UTF_8).trim();
        boolean ok = p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        if (!ok) {
            String why = "SKIPPED: cannot mount a tmpfs (" + options + ") here: needs root or CAP_SYS_ADMIN: " + out;
            System.err.println(why);
            Assume.assumeTrue(why, false);
        }
        mounts.add(0, dir);
        return dir;
    }

    @After
    public void unmountAll() throws Exception {
        for (Path dir : mounts) {
            Process p = new ProcessBuilder("umount", dir.toString()).redirectErrorStream(true).start();
            if (!p.waitFor(30, TimeUnit.SECONDS) || p.exitValue() != 0) {
                new ProcessBuilder("umount", "-l", dir.toString()).inheritIO().start().waitFor(30, TimeUnit.SECONDS);
            }
        }
        mounts.clear();
    }

    private static String resource() {
        return NativeAuth.resourcePath(System.getProperty("os.name"), System.getProperty("os.arch"));
    }

    /** Directory/source pairs in order. */
    private static Map<Path, String> dirs(Object... dirAndSource) {
        Map<Path, String> m = new LinkedHashMap<>();
        for (int i = 0; i < dirAndSource.length; i += 2) {
            m.put((Path) dirAndSource[i], (String) dirAndSource[i + 1]);
        }
        return m;
    }

    private static List<String> entries(Map<Path, String> dirs) {
        List<String> out = new ArrayList<>();
        dirs.forEach((d, s) -> out.add(d + "=" + s));
        return out;
    }

    private static void assertEmpty(Path dir) throws IOException {
        try (Stream<Path> left = Files.list(dir)) {
            assertEquals("left behind in " + dir, "[]", Arrays.toString(left.toArray()));
        }
    }

    /**
     * loadEmbedded(dirs) in a fresh class loader: asserts it used {@code expected} and that the
     * library it loaded decides calls; returns what was logged meanwhile.
     */
    private static String loadsFrom(Path expected, Map<Path, String> dirs) throws Exception {
        Class<?> isolated = isolatedNativeAuth();
        String log;
        try (LogCapture capture = new LogCapture()) {
            assertEquals(expected, invoke(isolated, "loadEmbedded", resource(), dirs));
            log = capture.text();
        }
        assertAuthorizes(isolated);
        return log;
    }

    /** The failure of loadEmbedded(dirs) in a fresh class loader, as load() reports it. */
    private static UnsatisfiedLinkError embeddedLoadError(Map<Path, String> dirs) throws Exception {
        Class<?> isolated = isolatedNativeAuth();
        try {
            invoke(isolated, "loadEmbedded", resource(), dirs);
        } catch (UnsatisfiedLinkError e) {
            UnsatisfiedLinkError wrapped = new UnsatisfiedLinkError("KBase auth native library unavailable: " + e.getMessage());
            wrapped.initCause(e);
            return wrapped;
        }
        fail("loadEmbedded succeeded");
        return null;
    }

    /** The library now loaded in {@code isolated}'s class loader decides calls. */
    private static void assertAuthorizes(Class<?> isolated) throws Exception {
        String token = Tokens.newToken();
        fake.addToken(token, "alice");
        long handle = (Long) invoke(isolated, "create",
                (Object) new String[] {"spark.kbase.auth.url", fake.url, "spark.kbase.auth.owner", "alice"});
        try {
            byte[] bearer = ("Bearer " + token).getBytes(java.nio.charset.StandardCharsets.US_ASCII);
            assertTrue(NativeAuth.allowed((Integer) invoke(isolated, "authorize", handle, bearer, null, null, null, null)));
            assertEquals(NativeAuth.UNAUTHENTICATED, invoke(isolated, "authorize", handle, null, null, null, null, null));
        } finally {
            invoke(isolated, "destroy", handle);
        }
    }
}
