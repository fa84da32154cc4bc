package qupath.lib.projects;

import java.io.File;
import java.io.IOException;

/** Reads projects, as QuPath's ProjectIO does. */
public class ProjectIO {

	public static final String DEFAULT_PROJECT_NAME = "project";
	public static final String DEFAULT_PROJECT_EXTENSION = "qpproj";

	private ProjectIO() {}

	public static String getProjectExtension() {
		return DEFAULT_PROJECT_EXTENSION;
	}

	@SuppressWarnings("unchecked")
	public static <T> Project<T> loadProject(final File fileProject, final Class<T> cls) throws IOException {
		if (!fileProject.isFile())
			throw new IOException("No project file at " + fileProject);
		return (Project<T>) DefaultProject.load(fileProject);
	}
}
