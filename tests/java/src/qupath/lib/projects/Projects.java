package qupath.lib.projects;

import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;

/** Creates projects, as QuPath's Projects does. */
public class Projects {

	private Projects() {}

	@SuppressWarnings("unchecked")
	public static <T> Project<T> createProject(File file, Class<T> cls) {
		if (!BufferedImage.class.equals(cls))
			throw new IllegalArgumentException("Cannot create project for " + cls);
		File qpproj = file.getName().endsWith("." + ProjectIO.DEFAULT_PROJECT_EXTENSION) ? file
				: new File(file, ProjectIO.DEFAULT_PROJECT_NAME + "." + ProjectIO.DEFAULT_PROJECT_EXTENSION);
		return (Project<T>) new DefaultProject(qpproj);
	}
}
