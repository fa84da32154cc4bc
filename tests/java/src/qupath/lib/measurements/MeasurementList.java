package qupath.lib.measurements;

import java.io.Serializable;
import java.util.List;
import java.util.Map;

/** QuPath's measurement list, with its 0.6 names (and the deprecated 0.5 ones as defaults). */
public interface MeasurementList extends Serializable, AutoCloseable {

	enum MeasurementListType { GENERAL, DOUBLE, FLOAT }

	void put(String name, double value);

	double get(String name);

	double remove(String name);

	List<String> getNames();

	@Deprecated
	default List<String> getMeasurementNames() {
		return getNames();
	}

	default boolean containsKey(String name) {
		return getNames().contains(name);
	}

	default int size() {
		return getNames().size();
	}

	default boolean isEmpty() {
		return size() == 0;
	}

	void removeAll(String... measurementNames);

	@Deprecated
	default void removeMeasurements(String... measurementNames) {
		removeAll(measurementNames);
	}

	void clear();

	Map<String, Number> asMap();

	@Override
	default void close() {}
}
