package us.kbase.spark;

import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * Run in a child JVM by {@link NativeAuthLoaderTest}, so that the environment the loader reads
 * can be set: loads the native library and prints {@code key=value} lines — {@code error=} on a
 * load failure, else {@code panicProbe=} and {@code mapped=} (the library file this process
 * mapped, from {@code /proc/self/maps}).
 */
public final class LibraryProbeMain {

    private LibraryProbeMain() {
    }

    public static void main(String[] args) throws Exception {
        try {
            NativeAuth.load();
        } catch (UnsatisfiedLinkError e) {
            System.out.println("error=" + e.getMessage());
            return;
        }
        System.out.println("panicProbe=" + NativeAuth.panicProbe());
        for (String line : Files.readAllLines(Paths.get("/proc/self/maps"))) {
            if (line.contains("kbase_spark_auth")) {
                System.out.println("mapped=" + line.substring(line.lastIndexOf(' ') + 1));
                break;
            }
        }
    }
}
