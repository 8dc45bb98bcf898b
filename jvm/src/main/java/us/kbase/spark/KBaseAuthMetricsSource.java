package us.kbase.spark;

import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

import com.codahale.metrics.CachedGauge;
import com.codahale.metrics.Gauge;
import com.codahale.metrics.MetricRegistry;

import org.apache.spark.metrics.source.Source;

/**
 * The native counters as gauges in Spark's metrics system (source {@value #NAME}), so that every
 * sink Spark is configured with (JMX, the UI's {@code /metrics/json}, Prometheus, ...) reports them.
 *
 * <p>The gauge names are the native side's ({@code allowed}, {@code denied.<reason>},
 * {@code cacheHits}, ...; {@link NativeAuth#metricNames()}), so this class knows no counter by name.
 * A scrape reads all gauges within a moment: they share one snapshot ({@code long[]}, one JNI call),
 * taken at most every {@value #SNAPSHOT_MILLIS} ms.
 */
final class KBaseAuthMetricsSource implements Source {

    static final String NAME = "kbaseAuth";
    static final long SNAPSHOT_MILLIS = 500;

    private final MetricRegistry registry = new MetricRegistry();

    KBaseAuthMetricsSource(Supplier<long[]> snapshot) {
        CachedGauge<long[]> latest = new CachedGauge<long[]>(SNAPSHOT_MILLIS, TimeUnit.MILLISECONDS) {
            @Override
            protected long[] loadValue() {
                return snapshot.get();
            }
        };
        String[] names = NativeAuth.metricNames();
        for (int i = 0; i < names.length; i++) {
            int index = i;
            registry.register(names[i], (Gauge<Long>) () -> latest.getValue()[index]);
        }
    }

    @Override
    public String sourceName() {
        return NAME;
    }

    @Override
    public MetricRegistry metricRegistry() {
        return registry;
    }
}
