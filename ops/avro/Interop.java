// Reads and writes esflow's bytes with the reference Java Avro implementation (org.apache.avro),
// so tests can prove single-object encoding is the standard format, not an esflow dialect.
//
// One command per stdin line, one answer per stdout line (one JVM for the whole test):
//   decode <reader.avsc> [<writer.avsc> ...] <hex>   -> JSON of the record, read with BinaryMessageDecoder
//                                                     (older writer schemas are resolved to the reader)
//   encode <schema.avsc>                             -> <hex> <JSON>: a sample record written with
//                                                     BinaryMessageEncoder, and the record itself
// A failure answers "ERROR <exception>", so the test sees Java's own verdict.
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.apache.avro.Conversions;
import org.apache.avro.LogicalTypes;
import org.apache.avro.Schema;
import org.apache.avro.data.TimeConversions;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public final class Interop {
  private static final GenericData MODEL = new GenericData();
  private static String aggregate = "order";

  static {
    MODEL.addLogicalTypeConversion(new Conversions.DecimalConversion());
    MODEL.addLogicalTypeConversion(new Conversions.UUIDConversion());
    MODEL.addLogicalTypeConversion(new TimeConversions.TimestampMicrosConversion());
  }

  public static void main(String[] args) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      if (line.isBlank()) continue;
      String[] parts = line.trim().split(" ");
      try {
        System.out.println(run(parts));
      } catch (Exception e) {
        System.out.println("ERROR " + e.getClass().getSimpleName() + ": " + String.valueOf(e.getMessage()).replace('\n', ' '));
      }
      System.out.flush();
    }
  }

  private static Schema parse(String path) throws Exception {
    return new Schema.Parser().parse(new File(path));
  }

  private static String run(String[] parts) throws Exception {
    if (parts[0].equals("decode")) {
      Schema reader = parse(parts[1]);
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(MODEL, reader);
      for (int i = 2; i < parts.length - 1; i++) decoder.addSchema(parse(parts[i]));
      GenericRecord record = decoder.decode(HexFormat.of().parseHex(parts[parts.length - 1]));
      return json(record);
    }
    if (parts[0].equals("encode")) {
      Schema schema = parse(parts[1]);
      aggregate = schema.getProp("esflow.aggregate");  // esflow's envelope must name the right aggregate
      Object record = sample(schema, schema.getName());
      byte[] bytes = new BinaryMessageEncoder<GenericRecord>(MODEL, schema).encode((GenericRecord) record).array();
      return HexFormat.of().formatHex(bytes) + " " + json(record);
    }
    throw new IllegalArgumentException("unknown command " + parts[0]);
  }

  // A deterministic sample built by Java alone (not the Python samples), so Python's reader is tested
  // on bytes it did not write.
  private static Object sample(Schema s, String path) {
    int seed = Math.abs(path.hashCode());
    if (s.getLogicalType() instanceof LogicalTypes.Decimal d) {
      return new BigDecimal(BigInteger.valueOf(seed % 10_000_000), d.getScale());
    }
    if (s.getLogicalType() != null && s.getLogicalType().getName().equals("uuid")) {
      return UUID.nameUUIDFromBytes(path.getBytes(StandardCharsets.UTF_8));
    }
    if (s.getLogicalType() instanceof LogicalTypes.TimestampMicros) {
      return Instant.ofEpochSecond(1_700_000_000L + seed % 100_000_000, (seed % 1_000_000) * 1000L);
    }
    switch (s.getType()) {
      case RECORD: {
        GenericData.Record r = new GenericData.Record(s);
        for (Schema.Field f : s.getFields()) r.put(f.name(), sample(f.schema(), path + "." + f.name()));
        return r;
      }
      case UNION: return sample(s.getTypes().get(s.getTypes().size() - 1), path);
      case ARRAY: {
        List<Object> items = new ArrayList<>();
        for (int i = 0; i < 2; i++) items.add(sample(s.getElementType(), path + "[" + i + "]"));
        return new GenericData.Array<>(s, items);
      }
      case ENUM: return new GenericData.EnumSymbol(s, s.getEnumSymbols().get(seed % s.getEnumSymbols().size()));
      case STRING: {
        String leaf = path.substring(path.lastIndexOf('.') + 1);
        if (leaf.equals("aggregate_type")) return aggregate;
        if (leaf.equals("currency")) return "CHF";
        if (leaf.equals("country")) return "CH";
        return "java-" + leaf + "-ünï-" + (seed % 1000);
      }
      case INT: return seed % 100_000;
      case LONG: return (long) seed * 1000L;
      case BOOLEAN: return seed % 2 == 0;
      case NULL: return null;
      default: throw new IllegalArgumentException("no sample for " + s);
    }
  }

  private static String json(Object o) {
    StringBuilder b = new StringBuilder();
    write(b, o);
    return b.toString();
  }

  private static void write(StringBuilder b, Object o) {
    if (o == null) {
      b.append("null");
    } else if (o instanceof GenericRecord r) {
      b.append('{');
      boolean first = true;
      for (Schema.Field f : r.getSchema().getFields()) {
        if (!first) b.append(',');
        first = false;
        quote(b, f.name());
        b.append(':');
        write(b, r.get(f.name()));
      }
      b.append('}');
    } else if (o instanceof Collection<?> c) {
      b.append('[');
      boolean first = true;
      for (Object item : c) {
        if (!first) b.append(',');
        first = false;
        write(b, item);
      }
      b.append(']');
    } else if (o instanceof Map<?, ?>) {
      throw new IllegalArgumentException("maps are not used by esflow schemas");
    } else if (o instanceof BigDecimal d) {
      quote(b, d.toPlainString());
    } else if (o instanceof Instant t) {
      b.append(t.getEpochSecond() * 1_000_000L + t.getNano() / 1000);
    } else if (o instanceof Number || o instanceof Boolean) {
      b.append(o);
    } else if (o instanceof ByteBuffer) {
      throw new IllegalArgumentException("raw bytes: a logical type conversion is missing");
    } else {
      quote(b, o.toString());
    }
  }

  private static void quote(StringBuilder b, String s) {
    b.append('"');
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') b.append('\\').append(c);
      else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
      else b.append(c);
    }
    b.append('"');
  }
}
