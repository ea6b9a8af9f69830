//! TF-IDF features over word unigrams and bigrams.
//!
//! The vocabulary is learnt from the training texts: every unigram and bigram found in at least
//! `min_df` documents, at most `max_features` of them (the most frequent; ties by term, so the
//! same corpus always gives the same vocabulary). A text becomes a sparse vector with
//! sublinear term frequency `1 + ln(count)` times the smoothed inverse document frequency
//! `ln((1 + n) / (1 + df)) + 1`, scaled to unit length, so long and short texts compare.

use std::collections::{HashMap, HashSet};

use crate::tokenize::tokenize;

/// A sparse feature vector: (feature index, value), sorted by index, unit length (or empty).
pub(crate) type Sparse = Vec<(u32, f32)>;

/// The learnt vocabulary and its IDF weights.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vectorizer {
    /// Terms by feature index, sorted.
    terms: Vec<String>,
    idf: Vec<f32>,
    index: HashMap<String, u32>,
}

/// The unigrams and bigrams (`"a b"`) of `text`.
fn terms_of(text: &str) -> Vec<String> {
    let words = tokenize(text);
    let mut terms = Vec::with_capacity(words.len() * 2);
    for pair in words.windows(2) {
        terms.push(format!("{} {}", pair[0], pair[1]));
    }
    terms.extend(words);
    terms
}

impl Vectorizer {
    /// Learns the vocabulary of `texts` (see the module docs).
    pub(crate) fn fit<'a>(texts: impl ExactSizeIterator<Item = &'a str>, min_df: u32, max_features: usize) -> Self {
        let documents = texts.len();
        let mut df: HashMap<String, u32> = HashMap::new();
        for text in texts {
            let unique: HashSet<String> = terms_of(text).into_iter().collect();
            for term in unique {
                *df.entry(term).or_default() += 1;
            }
        }
        let mut kept: Vec<(String, u32)> = df.into_iter().filter(|(_, n)| *n >= min_df).collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(max_features);
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let n = documents as f64;
        let idf = kept.iter().map(|(_, df)| (((1.0 + n) / (1.0 + f64::from(*df))).ln() + 1.0) as f32).collect();
        let terms = kept.into_iter().map(|(term, _)| term).collect();
        Self::from_parts(terms, idf)
    }

    /// A vectorizer from stored parts; the caller has checked that they have the same length.
    pub(crate) fn from_parts(terms: Vec<String>, idf: Vec<f32>) -> Self {
        let index = terms.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Self { terms, idf, index }
    }

    pub(crate) fn terms(&self) -> &[String] {
        &self.terms
    }

    pub(crate) fn idf(&self) -> &[f32] {
        &self.idf
    }

    pub(crate) fn len(&self) -> usize {
        self.terms.len()
    }

    /// The features of `text`; terms outside the vocabulary are ignored.
    pub(crate) fn transform(&self, text: &str) -> Sparse {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for term in terms_of(text) {
            if let Some(&i) = self.index.get(&term) {
                *counts.entry(i).or_default() += 1;
            }
        }
        let mut features: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(i, count)| (i, ((1.0 + f64::from(count).ln()) * f64::from(self.idf[i as usize])) as f32))
            .collect();
        features.sort_unstable_by_key(|(i, _)| *i);
        let norm = features.iter().map(|(_, v)| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (_, v) in &mut features {
                *v = (f64::from(*v) / norm) as f32;
            }
        }
        features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(texts: &[&str], min_df: u32, max_features: usize) -> Vectorizer {
        Vectorizer::fit(texts.iter().copied(), min_df, max_features)
    }

    #[test]
    fn the_vocabulary_keeps_terms_in_enough_documents() {
        let v = fit(&["red apple", "red apple pie", "green pear"], 2, 100);
        assert_eq!(v.terms(), ["apple", "red", "red apple"]);
        let all = fit(&["red apple", "red apple pie", "green pear"], 1, 100);
        assert!(all.terms().contains(&"apple pie".to_owned()));
        assert_eq!(all.len(), 8, "5 words and 3 pairs");
    }

    #[test]
    fn max_features_keeps_the_most_frequent_terms() {
        // df: alpha 3, beta 2, "alpha beta" 2, gamma 1, "alpha gamma" 1; ties go by term.
        let v = fit(&["alpha beta", "alpha gamma", "alpha beta"], 1, 2);
        assert_eq!(v.terms(), ["alpha", "alpha beta"]);
        let v = fit(&["alpha beta", "alpha gamma", "alpha beta"], 1, 3);
        assert_eq!(v.terms(), ["alpha", "alpha beta", "beta"]);
    }

    #[test]
    fn rarer_terms_weigh_more_and_vectors_have_unit_length() {
        let v = fit(&["common rare", "common other", "common thing"], 1, 100);
        let x = v.transform("common rare");
        let weight = |term: &str| {
            let i = v.terms().iter().position(|t| t == term).expect("term in vocabulary") as u32;
            x.iter().find(|(j, _)| *j == i).map(|(_, w)| *w).expect("feature present")
        };
        assert!(weight("rare") > weight("common"));
        let norm: f32 = x.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(x.windows(2).all(|w| w[0].0 < w[1].0), "sorted by index");
    }

    #[test]
    fn repeated_terms_grow_sublinearly() {
        let v = fit(&["one two", "two three"], 1, 100);
        let once = v.transform("one two");
        let many = v.transform("one one one one one one one one two");
        let one = v.terms().iter().position(|t| t == "one").expect("term") as u32;
        let two = v.terms().iter().position(|t| t == "two").expect("term") as u32;
        let ratio = |x: &Sparse| {
            let get = |i| x.iter().find(|(j, _)| *j == i).map(|(_, w)| *w).expect("feature");
            get(one) / get(two)
        };
        // Eight times the count gives 1 + ln 8 ≈ 3.08 times the weight, not 8.
        let growth = ratio(&many) / ratio(&once);
        assert!((growth - (1.0 + 8f32.ln())).abs() < 1e-3, "growth {growth}");
    }

    #[test]
    fn unknown_text_has_no_features() {
        let v = fit(&["alpha beta", "alpha beta"], 1, 100);
        assert!(v.transform("nothing known here").is_empty());
        assert!(v.transform("").is_empty());
    }
}
