//! Text → words: lowercase, accents folded (`é` → `e`), split on anything that is not a letter
//! or a digit. Numbers carry little meaning by their value but some by their shape (a year, an
//! amount, an invoice number), so a number becomes a bucket by digit count (`num1` … `num6`, six
//! or more digits), and the digits of a mixed word become `0` (`inv2024` → `inv0000`). Single
//! letters are dropped: they are initials and split contractions, noise for a classifier.

/// How many digits the largest number bucket stands for (and more).
const MAX_NUMBER_BUCKET: usize = 6;

/// The words of `text`, in order, normalised as the module docs say.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            for lower in c.to_lowercase() {
                push_folded(&mut word, lower);
            }
        } else {
            finish(&mut word, &mut tokens);
        }
    }
    finish(&mut word, &mut tokens);
    tokens
}

fn finish(word: &mut String, tokens: &mut Vec<String>) {
    if word.is_empty() {
        return;
    }
    let digits = word.chars().filter(|c| c.is_numeric()).count();
    let chars = word.chars().count();
    if digits == chars {
        tokens.push(format!("num{}", digits.min(MAX_NUMBER_BUCKET)));
    } else if chars > 1 {
        if digits > 0 {
            tokens.push(word.chars().map(|c| if c.is_numeric() { '0' } else { c }).collect());
        } else {
            tokens.push(word.clone());
        }
    }
    word.clear();
}

/// Appends `c` with its accent removed (Latin letters; other scripts are kept as they are).
fn push_folded(word: &mut String, c: char) {
    let folded = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        other => {
            word.push(other);
            return;
        }
    };
    word.push_str(folded);
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn words_are_lowercased_folded_and_bucketed() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello, World!", &["hello", "world"]),
            ("Café crème brûlée", &["cafe", "creme", "brulee"]),
            ("Straße Œuvre Ærø", &["strasse", "oeuvre", "aero"]),
            ("Total: 1,234.50 EUR", &["total", "num1", "num3", "num2", "eur"]),
            ("Invoice INV2024-0042 dated 2024", &["invoice", "inv0000", "num4", "dated", "num4"]),
            ("phone 0123456789", &["phone", "num6"]),
            ("I can't see a b c", &["can", "see"]),
            ("  \n\t ", &[]),
            ("", &[]),
            ("東京 tower", &["東京", "tower"]),
        ];
        for (text, expected) in cases {
            assert_eq!(tokenize(text), *expected, "tokens of {text:?}");
        }
    }
}
