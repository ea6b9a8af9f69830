//! Word wrapping shared by the image and PDF renderers.

/// Splits `text` into lines no wider than `max_width` as measured by `width`.
///
/// Line breaks in `text` are kept (a blank line stays blank), tabs become four spaces, other control
/// characters are dropped. A line that fits is kept as written, inner spacing included; a longer one
/// is broken between words, and a word wider than a whole line is broken between characters.
pub(crate) fn wrap(text: &str, max_width: f32, width: impl Fn(&str) -> f32) -> Vec<String> {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n").replace('\t', "    ");
    let mut lines = Vec::new();
    for raw in normalized.split('\n') {
        let line: String = raw.chars().filter(|c| !c.is_control()).collect();
        let line = line.trim_end();
        if width(line) <= max_width {
            lines.push(line.to_owned());
            continue;
        }
        let body = line.trim_start();
        let mut current = line[..line.len() - body.len()].to_owned();
        for word in body.split(' ').filter(|w| !w.is_empty()) {
            let candidate =
                if current.trim().is_empty() { format!("{current}{word}") } else { format!("{current} {word}") };
            if width(&candidate) <= max_width {
                current = candidate;
                continue;
            }
            if !current.trim().is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            current.clear();
            for c in word.chars() {
                current.push(c);
                if width(&current) > max_width && current.chars().count() > 1 {
                    current.pop();
                    lines.push(std::mem::take(&mut current));
                    current.push(c);
                }
            }
        }
        if !current.trim().is_empty() {
            lines.push(current);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::wrap;

    fn chars(s: &str) -> f32 {
        s.chars().count() as f32
    }

    #[test]
    fn breaks_between_words_within_the_width() {
        let lines = wrap("the quick brown fox jumps over the lazy dog", 10.0, chars);
        assert_eq!(lines, ["the quick", "brown fox", "jumps over", "the lazy", "dog"]);
    }

    #[test]
    fn keeps_line_breaks_blank_lines_and_spacing_of_short_lines() {
        let lines = wrap("TOTAL    9.99\r\n\n\tend", 20.0, chars);
        assert_eq!(lines, ["TOTAL    9.99", "", "    end"]);
    }

    #[test]
    fn breaks_a_word_longer_than_a_line() {
        let lines = wrap("ab abcdefghij", 4.0, chars);
        assert_eq!(lines, ["ab", "abcd", "efgh", "ij"]);
    }
}
