//! WinAnsiEncoding (Windows-1252) for the base-14 Helvetica text layer, with Helvetica's widths.

/// The byte that shows `c` in WinAnsiEncoding. Latin-1 letters such as `é` and the typographic
/// marks of 0x80–0x9F map exactly; other accented Latin letters lose their accent (`ł` → `l`);
/// anything else becomes `?`, so the text layer never silently drops a character.
pub(crate) fn encode_char(c: char) -> u8 {
    match c {
        ' '..='~' | '\u{A0}'..='\u{FF}' => c as u8,
        '€' => 0x80,
        '‚' => 0x82,
        'ƒ' => 0x83,
        '„' => 0x84,
        '…' => 0x85,
        '†' => 0x86,
        '‡' => 0x87,
        'ˆ' => 0x88,
        '‰' => 0x89,
        'Š' => 0x8A,
        '‹' => 0x8B,
        'Œ' => 0x8C,
        'Ž' => 0x8E,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '˜' => 0x98,
        '™' => 0x99,
        'š' => 0x9A,
        '›' => 0x9B,
        'œ' => 0x9C,
        'ž' => 0x9E,
        'Ÿ' => 0x9F,
        '\u{2000}'..='\u{200A}' | '\u{202F}' => b' ',
        '\u{2010}' | '\u{2011}' | '\u{2212}' => b'-',
        _ => without_accent(c).map_or(b'?', |base| base as u8),
    }
}

/// `text` in WinAnsiEncoding, one byte per character.
pub(crate) fn encode(text: &str) -> Vec<u8> {
    text.chars().map(encode_char).collect()
}

/// The unaccented ASCII letter for the Latin Extended-A letters common in European names.
fn without_accent(c: char) -> Option<char> {
    const PAIRS: &[(&str, char)] = &[
        ("ĀĂĄ", 'A'),
        ("āăą", 'a'),
        ("ĆĈĊČ", 'C'),
        ("ćĉċč", 'c'),
        ("ĎĐ", 'D'),
        ("ďđ", 'd'),
        ("ĒĔĖĘĚ", 'E'),
        ("ēĕėęě", 'e'),
        ("ĜĞĠĢ", 'G'),
        ("ĝğġģ", 'g'),
        ("ĪĬĮİ", 'I'),
        ("īĭįı", 'i'),
        ("ĹĻĽĿŁ", 'L'),
        ("ĺļľŀł", 'l'),
        ("ŃŅŇ", 'N'),
        ("ńņň", 'n'),
        ("ŌŎŐ", 'O'),
        ("ōŏő", 'o'),
        ("ŔŖŘ", 'R'),
        ("ŕŗř", 'r'),
        ("ŚŜŞȘ", 'S'),
        ("śŝşș", 's'),
        ("ŢŤȚ", 'T'),
        ("ţťț", 't'),
        ("ŨŪŬŮŰŲ", 'U'),
        ("ũūŭůűų", 'u'),
        ("ŹŻ", 'Z'),
        ("źż", 'z'),
    ];
    PAIRS.iter().find(|(accented, _)| accented.contains(c)).map(|&(_, base)| base)
}

/// Advance widths of Helvetica in 1/1000 em for WinAnsi codes 32–255 (from Adobe's AFM; unused
/// codes have the bullet's width, as readers show them).
const HELVETICA_WIDTHS: [u16; 224] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, //
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, //
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, //
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, //
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, //
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 350, //
    556, 350, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 350, 611, 350, //
    350, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 350, 500, 667, //
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, //
    400, 584, 333, 333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, //
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, //
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611, //
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, //
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500, //
];

/// Width of `text` set in Helvetica at `size` points.
pub(crate) fn helvetica_width(text: &str, size: f32) -> f32 {
    let units: u32 = text
        .chars()
        .map(|c| {
            let code = encode_char(c);
            u32::from(HELVETICA_WIDTHS[usize::from(code.saturating_sub(32))])
        })
        .sum();
    units as f32 * size / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_latin1_typography_and_falls_back() {
        assert_eq!(encode("Résumé"), b"R\xe9sum\xe9");
        assert_eq!(encode("“€5” – ok"), b"\x93\x805\x94 \x96 ok");
        assert_eq!(encode("Łódź"), b"L\xf3dz");
        assert_eq!(encode("日本"), b"??");
    }

    #[test]
    fn measures_with_helvetica_metrics() {
        // "Hi" = H (722) + i (222) at 10 pt.
        assert!((helvetica_width("Hi", 10.0) - 9.44).abs() < 1e-4);
        assert!((helvetica_width(" ", 1000.0) - 278.0).abs() < 1e-3);
    }
}
