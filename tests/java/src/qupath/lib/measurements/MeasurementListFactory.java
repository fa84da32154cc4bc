package qupath.lib.measurements;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Creates measurement lists, as in QuPath (every type is a map-backed list here). */
public class MeasurementListFactory {

	private MeasurementListFactory() {}

	public static MeasurementList createMeasurementList(int capacity, MeasurementList.MeasurementListType type) {
		return new MapMeasurementList();
	}

	private static final class MapMeasurementList implements MeasurementList {

		private static final long serialVersionUID = 1L;
		private final LinkedHashMap<String, Double> map = new LinkedHashMap<>();

		@Override public synchronized void put(String name, double value) { map.put(name, value); }
		@Override public synchronized double get(String name) { return map.getOrDefault(name, Double.NaN); }
		@Override public synchronized double remove(String name) {
			Double v = map.remove(name);
			return v == null ? Double.NaN : v;
		}
		@Override public synchronized List<String> getNames() { return Collections.unmodifiableList(new ArrayList<>(map.keySet())); }
		@Override public synchronized void removeAll(String... names) {
			for (String n : names)
				map.remove(n);
		}
		@Override public synchronized void clear() { map.clear(); }
		@Override public synchronized Map<String, Number> asMap() { return Collections.unmodifiableMap(new LinkedHashMap<>(map)); }
	}
}
