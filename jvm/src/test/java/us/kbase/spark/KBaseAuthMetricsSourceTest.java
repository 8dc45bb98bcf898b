package us.kbase.spark;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;

import com.codahale.metrics.Gauge;

import org.junit.Test;

import us.kbase.spark.testing.FakeAuth2;
import us.kbase.spark.testing.Tokens;

/** The Spark metrics source reports the native counters as they move. */
public class KBaseAuthMetricsSourceTest {

    private static final FakeAuth2 fake = FakeAuth2.shared();

    private static long gauge(KBaseAuthMetricsSource source, String name) {
        Gauge<?> g = source.metricRegistry().getGauges().get(name);
        assertTrue("no gauge " + name + " in " + source.metricRegistry().getGauges().keySet(), g != null);
        return (Long) g.getValue();
    }

    @Test
    public void gaugesFollowTheCounters() throws Exception {
        String token = Tokens.newToken();
        fake.addToken(token, "alice", 3_600_000L, "Used", List.of(), 300_000L);
        KBaseAuthServerInterceptor i = new KBaseAuthServerInterceptor(Map.of(
                "spark.kbase.auth.url", fake.url, "spark.kbase.auth.owner", "alice"));
        AtomicInteger snapshots = new AtomicInteger();
        KBaseAuthMetricsSource source = new KBaseAuthMetricsSource(() -> {
            snapshots.incrementAndGet();
            return i.metricValues();
        });
        assertEquals("kbaseAuth", source.sourceName());

        for (int n = 0; n < 3; n++) {
            assertTrue(KBaseAuthServerInterceptorTest.call(i, "Bearer " + token, null).allowed());
        }
        KBaseAuthServerInterceptorTest.call(i, null, null);

        assertEquals(3, gauge(source, "allowed"));
        assertEquals(2, gauge(source, "cacheHits"));
        assertEquals(1, gauge(source, "cacheMisses"));
        assertEquals(1, gauge(source, "auth2Requests"));
        assertEquals(1, gauge(source, "denied.missing_token"));
        assertEquals(0, gauge(source, "denied.user_not_allowed"));
        assertEquals(0, gauge(source, "staleAllows"));
        assertEquals(0, gauge(source, "denied.too_many_new_tokens"));
        assertEquals("one scrape, one native snapshot", 1, snapshots.get());
        // A later scrape sees later counts.
        KBaseAuthServerInterceptorTest.call(i, "Bearer " + token, null);
        Thread.sleep(KBaseAuthMetricsSource.SNAPSHOT_MILLIS + 100);
        assertEquals(4, gauge(source, "allowed"));
        assertEquals(2, snapshots.get());
        i.close();
    }
}
