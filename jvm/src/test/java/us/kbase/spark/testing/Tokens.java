package us.kbase.spark.testing;

import java.security.SecureRandom;

/** Random KBase-shaped tokens (32 base32 characters), distinct enough to search logs for. */
public final class Tokens {

    private static final SecureRandom RANDOM = new SecureRandom();
    private static final char[] BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".toCharArray();

    private Tokens() {
    }

    public static String newToken() {
        char[] c = new char[32];
        for (int i = 0; i < c.length; i++) {
            c[i] = BASE32[RANDOM.nextInt(BASE32.length)];
        }
        return new String(c);
    }
}
