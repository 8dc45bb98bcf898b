package us.kbase.spark.testing;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;

import org.junit.Assume;

/**
 * Skips the running JUnit test, saying why. Gradle 4.4 drops an assumption's message, so the reason
 * is also printed as {@code JUNIT-SKIP: <reason>}, which build.gradle shows with the test's name (and
 * a test skipped without such a line fails the build).
 */
public final class Skip {

    private Skip() {
    }

    /** Skips the running test, always. */
    public static void because(String reason) {
        System.out.println("JUNIT-SKIP: " + reason);
        System.out.flush();
        Assume.assumeTrue(reason, false);
    }

    /** Skips the running test unless this JVM runs as root; {@code what} names what needs root. */
    public static void unlessRoot(String what) {
        long uid = uid();
        if (uid != 0) {
            because(what + " needs root (running as uid " + uid + ")");
        }
    }

    /** This process's effective uid, from the kernel's own account of it. */
    public static long uid() {
        try {
            // "Uid:\treal\teffective\tsaved\tfilesystem"
            for (String line : Files.readAllLines(Paths.get("/proc/self/status"))) {
                if (line.startsWith("Uid:")) {
                    return Long.parseLong(line.split("\\s+")[2]);
                }
            }
        } catch (IOException | RuntimeException e) {
            throw new IllegalStateException("cannot read the uid from /proc/self/status", e);
        }
        throw new IllegalStateException("no Uid line in /proc/self/status");
    }
}
