package qupath.lib.images.servers;

/** Pixel types, as in QuPath. */
public enum PixelType {
	UINT8(8), INT8(8), UINT16(16), INT16(16), UINT32(32), INT32(32), FLOAT32(32), FLOAT64(64);

	private final int bitsPerPixel;

	PixelType(int bitsPerPixel) {
		this.bitsPerPixel = bitsPerPixel;
	}

	public int getBitsPerPixel() { return bitsPerPixel; }
	public int getBytesPerPixel() { return bitsPerPixel / 8; }
	public boolean isFloatingPoint() { return this == FLOAT32 || this == FLOAT64; }
	public boolean isSignedInteger() { return this == INT8 || this == INT16 || this == INT32; }
	public boolean isUnsignedInteger() { return this == UINT8 || this == UINT16 || this == UINT32; }
}
