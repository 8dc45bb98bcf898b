package us.kbase.spark;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Iterator;
import java.util.Map;
import java.util.function.Supplier;

import com.codahale.metrics.Gauge;
import com.codahale.metrics.MetricRegistry;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import org.apache.spark.metrics.source.Source;

/**
 * The native counters as gauges in Spark's metrics system (source {@value #NAME}), so that every
 * sink Spark is configured with (JMX, the UI's {@code /metrics/json}, Prometheus, ...) reports them.
 *
 * <p>The gauge names are the fields of the native JSON snapshot ({@code allowed},
 * {@code denied.<reason>}, {@code cacheHits}, ...), discovered from the first snapshot, so this
 * class knows no counter by name.
 */
final class KBaseAuthMetricsSource implements Source {

    static final String NAME = "kbaseAuth";
    private static final ObjectMapper JSON = new ObjectMapper();

    private final MetricRegistry registry = new MetricRegistry();

    KBaseAuthMetricsSource(Supplier<String> snapshot) {
        register("", parse(snapshot.get()), snapshot);
    }

    private void register(String prefix, JsonNode node, Supplier<String> snapshot) {
        Iterator<Map.Entry<String, JsonNode>> fields = node.fields();
        while (fields.hasNext()) {
            Map.Entry<String, JsonNode> field = fields.next();
            String path = prefix + field.getKey();
            if (field.getValue().isObject()) {
                register(path + ".", field.getValue(), snapshot);
            } else {
                registry.register(path, (Gauge<Long>) () -> parse(snapshot.get()).at("/" + path.replace('.', '/')).asLong());
            }
        }
    }

    private static JsonNode parse(String json) {
        try {
            return JSON.readTree(json);
        } catch (IOException e) {
            throw new UncheckedIOException("unreadable KBase auth metrics snapshot", e);
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
