package qupath.lib.regions;

import java.io.Serializable;

/** A z-slice and timepoint (channel -1 = all), as in QuPath. */
public class ImagePlane implements Serializable {

	private static final long serialVersionUID = 1L;
	private static final ImagePlane DEFAULT = new ImagePlane(-1, 0, 0);

	private final int c;
	private final int z;
	private final int t;

	private ImagePlane(int c, int z, int t) {
		this.c = c;
		this.z = z;
		this.t = t;
	}

	public static ImagePlane getDefaultPlane() {
		return DEFAULT;
	}

	public static ImagePlane getPlane(int z, int t) {
		return z == 0 && t == 0 ? DEFAULT : new ImagePlane(-1, z, t);
	}

	public int getC() { return c; }
	public int getZ() { return z; }
	public int getT() { return t; }

	@Override
	public boolean equals(Object o) {
		return o instanceof ImagePlane p && p.c == c && p.z == z && p.t == t;
	}

	@Override
	public int hashCode() {
		return (c * 31 + z) * 31 + t;
	}
}
