package us.kbase.spark;

import static org.hamcrest.CoreMatchers.containsString;
import static org.hamcrest.CoreMatchers.startsWith;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.rules.Timeout;

import us.kbase.spark.testing.FakeAuth2;
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
    public void unwritableTmpdirIsNamed() throws Exception {
        String dir = tmp.getRoot() + "/does-not-exist";
        Class<?> isolated = isolatedNativeAuth();
        System.setProperty(NativeAuth.TMPDIR_PROPERTY, dir);
        try {
            UnsatisfiedLinkError e = loadError(isolated);
            assertThat(e.getMessage(), containsString(dir));
            assertThat(e.getMessage(), containsString(NativeAuth.TMPDIR_PROPERTY));
        } finally {
            System.clearProperty(NativeAuth.TMPDIR_PROPERTY);
        }
    }

    @Test
    public void eachClassLoaderGetsItsOwnCopyAndLeavesNoFile() throws Exception {
        Path dir = tmp.newFolder("extract").toPath();
        String token = Tokens.newToken();
        fake.addToken(token, "alice");
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
        try (Stream<Path> left = Files.list(dir)) {
            assertEquals("extracted copies are deleted once loaded", 0, left.count());
        }
        String[] settings = {"spark.kbase.auth.url", fake.url, "spark.kbase.auth.owner", "alice"};
        for (Class<?> c : new Class<?>[] {a, b, NativeAuth.class}) {
            long handle = (Long) invoke(c, "create", (Object) settings);
            try {
                assertEquals(0, invoke(c, "authorize", handle, "Bearer " + token, null, null, null, null));
                assertEquals(NativeAuth.UNAUTHENTICATED, invoke(c, "authorize", handle, null, null, null, null, null));
            } finally {
                invoke(c, "destroy", handle);
            }
        }
    }

    @Test
    public void extractedCopyIsPrivateToTheOwner() throws IOException {
        Path f = NativeAuth.createPrivateTempFile(tmp.getRoot().toPath());
        assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(f)));
        assertThat(f.getFileName().toString(), startsWith("libkbase_spark_auth-"));
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
}
