package qupath.lib.objects.classes;

import java.io.ObjectStreamException;
import java.io.Serializable;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/** QuPath's object classification: one shared instance per name, with a packed RGB colour. */
public final class PathClass implements Comparable<PathClass>, Serializable {

	private static final long serialVersionUID = 1L;
	private static final Map<String, PathClass> EXISTING = new ConcurrentHashMap<>();

	private final PathClass parentClass;
	private final String name;
	private Integer colorRGB;

	private PathClass(PathClass parentClass, String name, Integer colorRGB) {
		this.parentClass = parentClass;
		this.name = name;
		this.colorRGB = colorRGB;
	}

	public static PathClass fromString(String pathClassString) {
		return fromString(pathClassString, null);
	}

	public static PathClass fromString(String pathClassString, Integer rgb) {
		if (pathClassString == null || pathClassString.isBlank())
			return null;
		String[] parts = pathClassString.split(":");
		PathClass pc = null;
		for (int i = 0; i < parts.length; i++)
			pc = getInstance(pc, parts[i].strip(), i == parts.length - 1 ? rgb : null);
		return pc;
	}

	public static PathClass fromArray(String... names) {
		return fromString(String.join(": ", names));
	}

	public static PathClass getInstance(String name, Integer rgb) {
		return getInstance(null, name, rgb);
	}

	public static PathClass getInstance(PathClass parent, String name, Integer rgb) {
		String key = parent == null ? name : parent + ": " + name;
		return EXISTING.computeIfAbsent(key, k -> new PathClass(parent, name,
				rgb != null ? rgb : Integer.valueOf(0xff000000 | (k.hashCode() & 0xffffff))));
	}

	public PathClass getParentClass() { return parentClass; }
	public boolean isDerivedClass() { return parentClass != null; }
	public String getName() { return name; }
	public Integer getColor() { return colorRGB; }
	public void setColor(Integer rgb) { this.colorRGB = rgb; }

	@Override
	public String toString() {
		return parentClass == null ? name : parentClass + ": " + name;
	}

	@Override
	public int compareTo(PathClass o) {
		return toString().compareTo(o.toString());
	}

	private Object readResolve() throws ObjectStreamException {
		return getInstance(parentClass, name, colorRGB);
	}
}
