package qupath.lib.projects;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Stand-in only (QuPath uses Gson): just enough JSON to keep project.qpproj and classes.json in QuPath's layout. */
final class StandInJson {

	private final String s;
	private int i;

	private StandInJson(String s) {
		this.s = s;
	}

	static Object parse(String text) {
		StandInJson p = new StandInJson(text);
		Object v = p.value();
		p.ws();
		if (p.i != p.s.length())
			throw p.error("trailing characters");
		return v;
	}

	static String write(Object v) {
		StringBuilder sb = new StringBuilder();
		write(v, sb, "");
		return sb.toString();
	}

	private static void write(Object v, StringBuilder sb, String indent) {
		if (v instanceof Map<?, ?> m) {
			sb.append("{");
			String inner = indent + "  ";
			boolean first = true;
			for (Map.Entry<?, ?> e : m.entrySet()) {
				sb.append(first ? "\n" : ",\n").append(inner);
				quote(e.getKey().toString(), sb);
				sb.append(": ");
				write(e.getValue(), sb, inner);
				first = false;
			}
			sb.append(first ? "}" : "\n" + indent + "}");
		} else if (v instanceof List<?> l) {
			sb.append("[");
			for (int k = 0; k < l.size(); k++) {
				sb.append(k == 0 ? "" : ", ");
				write(l.get(k), sb, indent);
			}
			sb.append("]");
		} else if (v instanceof String str) {
			quote(str, sb);
		} else {
			sb.append(v);
		}
	}

	private static void quote(String str, StringBuilder sb) {
		sb.append('"');
		for (char c : str.toCharArray()) {
			if (c == '"' || c == '\\')
				sb.append('\\').append(c);
			else if (c < 0x20)
				sb.append(String.format("\\u%04x", (int) c));
			else
				sb.append(c);
		}
		sb.append('"');
	}

	private IllegalArgumentException error(String what) {
		return new IllegalArgumentException("Malformed JSON at character " + i + ": " + what);
	}

	private void ws() {
		while (i < s.length() && Character.isWhitespace(s.charAt(i)))
			i++;
	}

	private Object value() {
		ws();
		if (i >= s.length())
			throw error("unexpected end");
		char c = s.charAt(i);
		if (c == '{') {
			Map<String, Object> m = new LinkedHashMap<>();
			i++;
			ws();
			if (s.charAt(i) == '}') { i++; return m; }
			while (true) {
				ws();
				String key = string();
				ws();
				expect(':');
				m.put(key, value());
				ws();
				if (s.charAt(i) == ',') { i++; continue; }
				expect('}');
				return m;
			}
		}
		if (c == '[') {
			List<Object> l = new ArrayList<>();
			i++;
			ws();
			if (s.charAt(i) == ']') { i++; return l; }
			while (true) {
				l.add(value());
				ws();
				if (s.charAt(i) == ',') { i++; continue; }
				expect(']');
				return l;
			}
		}
		if (c == '"')
			return string();
		for (String lit : new String[] {"true", "false", "null"}) {
			if (s.startsWith(lit, i)) {
				i += lit.length();
				return lit.equals("null") ? null : Boolean.valueOf(lit);
			}
		}
		int start = i;
		while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0)
			i++;
		if (start == i)
			throw error("unexpected '" + c + "'");
		String num = s.substring(start, i);
		if (num.contains(".") || num.contains("e") || num.contains("E"))
			return Double.valueOf(num);
		return Long.valueOf(num);
	}

	private void expect(char c) {
		if (i >= s.length() || s.charAt(i) != c)
			throw error("expected '" + c + "'");
		i++;
	}

	private String string() {
		expect('"');
		StringBuilder sb = new StringBuilder();
		while (true) {
			if (i >= s.length())
				throw error("unterminated string");
			char c = s.charAt(i++);
			if (c == '"')
				return sb.toString();
			if (c == '\\') {
				char e = s.charAt(i++);
				switch (e) {
					case 'n': sb.append('\n'); break;
					case 't': sb.append('\t'); break;
					case 'r': sb.append('\r'); break;
					case 'b': sb.append('\b'); break;
					case 'f': sb.append('\f'); break;
					case 'u': sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16)); i += 4; break;
					default: sb.append(e);
				}
			} else {
				sb.append(c);
			}
		}
	}
}
