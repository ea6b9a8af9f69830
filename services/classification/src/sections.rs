//! Splitting a long text into the sections `ClassifySections` classifies one by one.
//!
//! A section is a paragraph (lines between blank lines). Paragraphs shorter than
//! [`MIN_SECTION_CHARS`] are joined with the ones after them, since a heading or a two-word line
//! alone says too little to classify; a short tail is joined with the section before it.

/// A section should have at least this many characters (a short text is one section).
pub(crate) const MIN_SECTION_CHARS: usize = 200;

/// A section's place in the text, in characters (Unicode scalar values), end exclusive, and in
/// bytes for slicing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Section {
    pub start: usize,
    pub end: usize,
    pub bytes: (usize, usize),
}

impl Section {
    pub fn text<'a>(&self, text: &'a str) -> &'a str {
        &text[self.bytes.0..self.bytes.1]
    }

    fn chars(&self) -> usize {
        self.end - self.start
    }
}

/// The sections of `text`, in order; none for a text of only whitespace.
pub(crate) fn sections(text: &str, min_chars: usize) -> Vec<Section> {
    let mut merged: Vec<Section> = Vec::new();
    let mut open: Option<Section> = None;
    for paragraph in paragraphs(text) {
        let current = match open.take() {
            Some(open) => Section { start: open.start, end: paragraph.end, bytes: (open.bytes.0, paragraph.bytes.1) },
            None => paragraph,
        };
        if current.chars() >= min_chars {
            merged.push(current);
        } else {
            open = Some(current);
        }
    }
    if let Some(tail) = open {
        match merged.last_mut() {
            Some(last) => {
                last.end = tail.end;
                last.bytes.1 = tail.bytes.1;
            }
            None => merged.push(tail),
        }
    }
    merged
}

/// Runs of non-blank lines, trimmed of surrounding whitespace.
fn paragraphs(text: &str) -> Vec<Section> {
    let mut paragraphs = Vec::new();
    let mut current: Option<Section> = None;
    let (mut byte, mut char) = (0, 0);
    for line in text.split_inclusive('\n') {
        let line_chars = line.chars().count();
        let trimmed_start = line.trim_start();
        if trimmed_start.is_empty() {
            paragraphs.extend(current.take());
        } else {
            let leading = &line[..line.len() - trimmed_start.len()];
            let content = trimmed_start.trim_end();
            let start_byte = byte + leading.len();
            let start_char = char + leading.chars().count();
            let end = (start_byte + content.len(), start_char + content.chars().count());
            let paragraph = current.get_or_insert(Section { start: start_char, end: 0, bytes: (start_byte, 0) });
            paragraph.end = end.1;
            paragraph.bytes.1 = end.0;
        }
        byte += line.len();
        char += line_chars;
    }
    paragraphs.extend(current);
    paragraphs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str, min_chars: usize) -> Vec<&str> {
        sections(text, min_chars).iter().map(|s| s.text(text)).collect()
    }

    #[test]
    fn paragraphs_become_sections() {
        let text = "  First paragraph\nstill first.\n\n\n Second one. \n\t\nThird";
        assert_eq!(texts(text, 1), ["First paragraph\nstill first.", "Second one.", "Third"]);
    }

    #[test]
    fn short_paragraphs_are_joined_and_a_short_tail_goes_to_the_last_section() {
        let text = "Title\n\nA body long enough.\n\nTail";
        assert_eq!(texts(text, 10), ["Title\n\nA body long enough.\n\nTail"]);
        let text = "Heading\n\nThe first body is long enough.\n\nThe second body is long too.\n\nEnd";
        assert_eq!(
            texts(text, 20),
            ["Heading\n\nThe first body is long enough.", "The second body is long too.\n\nEnd"]
        );
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        let text = "ééé\n\nçà";
        let found = sections(text, 1);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].start, found[0].end), (0, 3));
        assert_eq!((found[1].start, found[1].end), (5, 7));
        let chars: Vec<char> = text.chars().collect();
        assert_eq!(chars[found[1].start..found[1].end].iter().collect::<String>(), found[1].text(text));
    }

    #[test]
    fn blank_text_has_no_sections_and_short_text_is_one() {
        assert!(sections(" \n\n\t\n", 1).is_empty());
        assert!(sections("", 1).is_empty());
        assert_eq!(texts("just a line", MIN_SECTION_CHARS), ["just a line"]);
    }
}
