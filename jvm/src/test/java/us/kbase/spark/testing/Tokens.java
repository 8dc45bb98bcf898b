package us.kbase.spark.testing;

import java.security.SecureRandom;

/** Random KBase-shaped tokens (32 base32 characters), distinct enough to search logs for. */
public final class Tokens {

    private static final SecureRandom RANDOM = new SecureRandom();
    private static final char[] BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".toCharArray();

    private Tokens() {
    }

    /** The plugin's fingerprint of a token: the first 8 hex characters of its SHA-256. */
    public static String fingerprint(String token) {
        try {
            byte[] d = java.security.MessageDigest.getInstance("SHA-256")
                    .digest(token.getBytes(java.nio.charset.StandardCharsets.UTF_8));
            return String.format("%02x%02x%02x%02x", d[0], d[1], d[2], d[3]);
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    public static String newToken() {
        char[] c = new char[32];
        for (int i = 0; i < c.length; i++) {
            c[i] = BASE32[RANDOM.nextInt(BASE32.length)];
        }
        return new String(c);
    }
}
