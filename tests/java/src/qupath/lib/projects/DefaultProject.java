package qupath.lib.projects;

import java.awt.image.BufferedImage;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;

import qupath.lib.common.GeneralTools;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.images.servers.ImageServerBuilder.ServerBuilder;
import qupath.lib.images.servers.StandInTiffServer;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/**
 * A project on disk in QuPath's layout: project.qpproj (JSON), classifiers/classes.json, data/ID/data.qpdata
 * (Java serialization). The entries' server builders are the stand-in's TIFF builders.
 */
class DefaultProject implements Project<BufferedImage> {

	private static final String DATA_HEADER = "QuPath serialized data (stand-in)";

	private final File file;
	private final List<DefaultProjectImageEntry> images = new ArrayList<>();
	private final List<PathClass> pathClasses = new ArrayList<>();
	private long creationTimestamp = System.currentTimeMillis();
	private long modificationTimestamp = creationTimestamp;
	private int lastID = 0;

	DefaultProject(File file) {
		this.file = file.getAbsoluteFile();
	}

	@SuppressWarnings("unchecked")
	static DefaultProject load(File file) throws IOException {
		DefaultProject project = new DefaultProject(file);
		Map<String, Object> json;
		try {
			json = (Map<String, Object>) StandInJson.parse(Files.readString(file.toPath(), StandardCharsets.UTF_8));
		} catch (RuntimeException e) {
			throw new IOException("Unable to read project from " + file + ": " + e.getMessage(), e);
		}
		if (!json.containsKey("images"))
			throw new IOException("Unable to read project from " + file + ": no images list");
		project.creationTimestamp = ((Number) json.getOrDefault("createTimestamp", 0L)).longValue();
		project.modificationTimestamp = ((Number) json.getOrDefault("modifyTimestamp", 0L)).longValue();
		project.lastID = ((Number) json.getOrDefault("lastID", 0L)).intValue();
		for (Object o : (List<Object>) json.get("images")) {
			Map<String, Object> e = (Map<String, Object>) o;
			Map<String, Object> builder = (Map<String, Object>) e.get("serverBuilder");
			var entry = project.new DefaultProjectImageEntry(new StandInTiffServer.Builder(URI.create((String) builder.get("uri"))),
					((Number) e.get("entryID")).intValue(), (String) e.get("imageName"));
			project.images.add(entry);
		}
		Path classes = project.getBasePath().resolve("classifiers").resolve("classes.json");
		if (Files.exists(classes)) {
			try {
				var c = (Map<String, Object>) StandInJson.parse(Files.readString(classes, StandardCharsets.UTF_8));
				for (Object o : (List<Object>) c.get("pathClasses")) {
					Map<String, Object> pc = (Map<String, Object>) o;
					List<Object> rgb = (List<Object>) pc.get("color");
					Integer color = rgb == null ? null : (((Number) rgb.get(0)).intValue() << 16)
							| (((Number) rgb.get(1)).intValue() << 8) | ((Number) rgb.get(2)).intValue();
					project.pathClasses.add(PathClass.fromString((String) pc.get("name"), color));
				}
			} catch (RuntimeException e) {
				throw new IOException("Unable to read " + classes + ": " + e.getMessage(), e);
			}
		}
		return project;
	}

	Path getBasePath() {
		return file.toPath().getParent();
	}

	@Override public List<PathClass> getPathClasses() { return Collections.unmodifiableList(pathClasses); }

	@Override
	public boolean setPathClasses(Collection<? extends PathClass> pathClasses) {
		if (this.pathClasses.equals(new ArrayList<>(pathClasses)))
			return false;
		this.pathClasses.clear();
		this.pathClasses.addAll(pathClasses);
		return true;
	}

	@Override public URI getURI() { return file.toURI(); }
	@Override public String getVersion() { return GeneralTools.getVersion(); }
	@Override public Path getPath() { return file.toPath(); }
	@Override public boolean isEmpty() { return images.isEmpty(); }
	@Override public List<ProjectImageEntry<BufferedImage>> getImageList() { return new ArrayList<>(images); }
	@Override public String getName() { return getBasePath().getFileName().toString(); }

	@Override
	public ProjectImageEntry<BufferedImage> addImage(ServerBuilder<BufferedImage> server) throws IOException {
		var entry = new DefaultProjectImageEntry(server, ++lastID, null);
		images.add(entry);
		return entry;
	}

	@Override
	public ProjectImageEntry<BufferedImage> getEntry(ImageData<BufferedImage> imageData) {
		for (var entry : images)
			if (entry.lastData == imageData)
				return entry;
		return null;
	}

	@Override
	public synchronized void syncChanges() throws IOException {
		Files.createDirectories(getBasePath());
		modificationTimestamp = System.currentTimeMillis();
		Map<String, Object> json = new LinkedHashMap<>();
		json.put("version", GeneralTools.getVersion());
		json.put("createTimestamp", creationTimestamp);
		json.put("modifyTimestamp", modificationTimestamp);
		json.put("uri", file.toURI().toString());
		json.put("lastID", lastID);
		List<Object> list = new ArrayList<>();
		for (var entry : images) {
			Map<String, Object> builder = new LinkedHashMap<>();
			builder.put("builderType", "uri");
			builder.put("providerClassName", StandInTiffServer.class.getName());
			builder.put("uri", entry.builder.getURIs().iterator().next().toString());
			Map<String, Object> e = new LinkedHashMap<>();
			e.put("serverBuilder", builder);
			e.put("entryID", entry.id);
			e.put("randomizedName", entry.randomizedName);
			e.put("imageName", entry.getImageName());
			e.put("metadata", new LinkedHashMap<>());
			list.add(e);
		}
		json.put("images", list);
		writeAtomically(file.toPath(), StandInJson.write(json));
		List<Object> classes = new ArrayList<>();
		for (PathClass pc : pathClasses) {
			Map<String, Object> c = new LinkedHashMap<>();
			c.put("name", pc.toString());
			int rgb = pc.getColor() == null ? 0 : pc.getColor();
			c.put("color", List.of((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255));
			classes.add(c);
		}
		Path classesPath = getBasePath().resolve("classifiers").resolve("classes.json");
		Files.createDirectories(classesPath.getParent());
		writeAtomically(classesPath, StandInJson.write(Map.of("pathClasses", classes)));
	}

	private static void writeAtomically(Path path, String text) throws IOException {
		Path tmp = path.resolveSibling(path.getFileName() + ".tmp");
		Files.writeString(tmp, text, StandardCharsets.UTF_8);
		Files.move(tmp, path, StandardCopyOption.REPLACE_EXISTING);
	}

	class DefaultProjectImageEntry implements ProjectImageEntry<BufferedImage> {

		private ServerBuilder<BufferedImage> builder;
		private final int id;
		private final String randomizedName = UUID.randomUUID().toString();
		private String imageName;
		private ImageData<BufferedImage> lastData;

		DefaultProjectImageEntry(ServerBuilder<BufferedImage> builder, int id, String imageName) {
			this.builder = builder;
			this.id = id;
			this.imageName = imageName;
		}

		@Override public String getID() { return Integer.toString(id); }
		@Override public void setImageName(String name) { this.imageName = name; }

		@Override
		public String getImageName() {
			if (imageName != null)
				return imageName;
			String path = builder.getURIs().iterator().next().getPath();
			return path.substring(path.lastIndexOf('/') + 1);
		}

		@Override public String getOriginalImageName() { return getImageName(); }
		@Override public Path getEntryPath() { return getBasePath().resolve("data").resolve(getID()); }
		@Override public ServerBuilder<BufferedImage> getServerBuilder() { return builder; }
		@Override public Collection<URI> getURIs() { return builder.getURIs(); }

		@Override
		public boolean updateURIs(Map<URI, URI> replacements) {
			var updated = builder.updateURIs(replacements);
			boolean changed = !updated.getURIs().equals(builder.getURIs());
			builder = updated;
			return changed;
		}

		private Path getImageDataPath() {
			return getEntryPath().resolve("data.qpdata");
		}

		@Override public boolean hasImageData() { return Files.exists(getImageDataPath()); }
		@Override public String getSummary() { return getImageName(); }

		@Override
		public synchronized ImageData<BufferedImage> readImageData() throws IOException {
			ImageServer<BufferedImage> server;
			try {
				server = builder.build();
			} catch (IOException e) {
				throw e;
			} catch (Exception e) {
				throw new IOException(e);
			}
			ImageData<BufferedImage> data = new ImageData<>(server);
			if (hasImageData())
				data = new ImageData<>(server, readHierarchy(), ImageData.ImageType.UNSET);
			lastData = data;
			return data;
		}

		@Override
		public synchronized void saveImageData(ImageData<BufferedImage> imageData) throws IOException {
			Path pathData = getImageDataPath();
			Files.createDirectories(pathData.getParent());
			Path pathBackup = pathData.resolveSibling("data.qpdata.bkp");
			if (Files.exists(pathData))
				Files.move(pathData, pathBackup, StandardCopyOption.REPLACE_EXISTING);
			try (var out = new ObjectOutputStream(new BufferedOutputStream(Files.newOutputStream(pathData)))) {
				out.writeUTF(DATA_HEADER);
				out.writeObject(imageData.getServerPath());
				out.writeObject(imageData.getImageType().name());
				out.writeObject(imageData.getHierarchy());
			}
			Files.deleteIfExists(pathBackup);
			lastData = imageData;
		}

		@Override
		public synchronized PathObjectHierarchy readHierarchy() throws IOException {
			if (!hasImageData())
				return new PathObjectHierarchy();
			try (var in = new ObjectInputStream(new BufferedInputStream(Files.newInputStream(getImageDataPath())))) {
				if (!DATA_HEADER.equals(in.readUTF()))
					throw new IOException("Not a data file: " + getImageDataPath());
				in.readObject();
				in.readObject();
				return (PathObjectHierarchy) in.readObject();
			} catch (ClassNotFoundException e) {
				throw new IOException(e);
			}
		}
	}
}
