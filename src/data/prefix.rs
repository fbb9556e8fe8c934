//! Tokenizing only what right truncation keeps. A review of 230 words cut
//! to 128 tokens need not be tokenized to its end: when the tokenizer splits
//! words at spaces before its model sees them, the tokens of a text's first
//! words are the first tokens of the whole text, so encoding the first
//! `max_length` words gives the same truncated encoding whenever that prefix
//! still had to be truncated. A prefix that was not (its words made fewer
//! tokens than `max_length`) is encoded again in full, so the result is
//! always that of the whole text.

use serde_json::Value as Json;
use tokenizers::{EncodeInput, Encoding, Tokenizer};

/// Pre-tokenizers that split at every ASCII space and only split further.
const SPLITTING_PRE_TOKENIZERS: &[&str] = &[
    "BertPreTokenizer",
    "Whitespace",
    "WhitespaceSplit",
    "ByteLevel",
    "Metaspace",
];

/// Normalizers that map characters without joining or moving them across a space.
const LOCAL_NORMALIZERS: &[&str] = &[
    "BertNormalizer",
    "Lowercase",
    "NFC",
    "NFD",
    "NFKC",
    "NFKD",
    "StripAccents",
    "Strip",
    "Prepend",
];

/// True when a text may be cut before a space: the normalizer is local, the
/// pre-tokenizer splits there (ByteLevel with its regex, Metaspace with
/// `split`), and no added token contains a space.
pub fn cuts_at_spaces(tokenizer: &Tokenizer) -> bool {
    let normalizer = match tokenizer.get_normalizer() {
        None => true,
        Some(n) => serde_json::to_value(n)
            .is_ok_and(|json| all_of(&json, "normalizers", &|part| LOCAL_NORMALIZERS.contains(&type_of(part)))),
    };
    let pre_tokenizer = tokenizer
        .get_pre_tokenizer()
        .is_some_and(|p| serde_json::to_value(p).is_ok_and(|json| all_of(&json, "pretokenizers", &splits_at_spaces)));
    let added = tokenizer
        .get_added_tokens_decoder()
        .values()
        .all(|t| !t.content.contains(' '));
    normalizer && pre_tokenizer && added
}

fn type_of(json: &Json) -> &str {
    json["type"].as_str().unwrap_or_default()
}

/// `check` holds for `json`, or for every member when it is a `Sequence` (under `members`).
fn all_of(json: &Json, members: &str, check: &dyn Fn(&Json) -> bool) -> bool {
    match (type_of(json), json[members].as_array()) {
        ("Sequence", Some(parts)) => !parts.is_empty() && parts.iter().all(|p| all_of(p, members, check)),
        _ => check(json),
    }
}

fn splits_at_spaces(json: &Json) -> bool {
    let kind = type_of(json);
    SPLITTING_PRE_TOKENIZERS.contains(&kind)
        && match kind {
            "ByteLevel" => json["use_regex"].as_bool() != Some(false),
            "Metaspace" => json["split"].as_bool() != Some(false),
            _ => true,
        }
}

/// `text` up to the space that ends its `words`-th space-separated word, or
/// all of it when it has no more words than that.
pub fn first_words(text: &str, words: usize) -> &str {
    let mut seen = 0;
    let mut in_word = false;
    for (at, byte) in text.bytes().enumerate() {
        if byte == b' ' {
            if in_word {
                seen += 1;
                if seen == words {
                    return &text[..at];
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    text
}

/// The encodings of `texts` under the tokenizer's right truncation to
/// `max_length` tokens, equal to `encode_batch_fast` of the whole texts;
/// `cut` says whether [`cuts_at_spaces`] holds (texts are then encoded from
/// their first `max_length` words, and again in full where that was short).
pub fn encode_truncated(
    tokenizer: &Tokenizer,
    texts: &[&str],
    max_length: usize,
    add_special_tokens: bool,
    cut: bool,
) -> tokenizers::Result<Vec<Encoding>> {
    let whole = |texts: Vec<&str>| tokenizer.encode_batch_fast(texts, add_special_tokens);
    if !cut {
        return whole(texts.to_vec());
    }
    let prefixes: Vec<&str> = texts.iter().map(|t| first_words(t, max_length)).collect();
    let inputs: Vec<EncodeInput> = prefixes.iter().map(|&p| p.into()).collect();
    let mut encodings = tokenizer.encode_batch_fast(inputs, add_special_tokens)?;
    let short: Vec<usize> = (0..texts.len())
        .filter(|&i| prefixes[i].len() < texts[i].len() && encodings[i].get_overflowing().is_empty())
        .collect();
    if !short.is_empty() {
        let again = whole(short.iter().map(|&i| texts[i]).collect())?;
        for (i, encoding) in short.into_iter().zip(again) {
            encodings[i] = encoding;
        }
    }
    Ok(encodings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

    fn bert(max_length: usize) -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/tokenizers/bert-base-cased/tokenizer.json"
        );
        let mut tokenizer = Tokenizer::from_file(path).expect("bert-base-cased's tokenizer.json");
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .unwrap();
        tokenizer
    }

    #[test]
    fn first_words_cut_before_the_space_after_the_nth_word() {
        assert_eq!(first_words("a b c", 2), "a b");
        assert_eq!(first_words("  a   b  c ", 2), "  a   b");
        assert_eq!(first_words("a b", 2), "a b");
        assert_eq!(first_words("a\tb c", 1), "a\tb");
        assert_eq!(first_words("", 3), "");
        assert_eq!(first_words("é ü", 1), "é");
    }

    #[test]
    fn bert_and_byte_level_tokenizers_cut_and_others_do_not() {
        assert!(cuts_at_spaces(&bert(128)));
        let minilm = std::env::var("MINILM_DIR").expect("MINILM_DIR names all-MiniLM-L6-v2 (make checkpoint)");
        assert!(cuts_at_spaces(
            &Tokenizer::from_file(format!("{minilm}/tokenizer.json")).unwrap()
        ));
        let with = |pre: &str, normalizer: &str| {
            let json = serde_json::json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": serde_json::from_str::<Json>(normalizer).unwrap(),
                "pre_tokenizer": serde_json::from_str::<Json>(pre).unwrap(),
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"},
            });
            cuts_at_spaces(&json.to_string().parse::<Tokenizer>().unwrap())
        };
        let level = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#;
        assert!(with(level, "null"));
        assert!(!with(
            &level.replace("\"use_regex\": true", "\"use_regex\": false"),
            "null"
        ));
        let sequence = |second: &str| format!(r#"{{"type": "Sequence", "pretokenizers": [{level}, {second}]}}"#);
        assert!(with(&sequence(r#"{"type": "WhitespaceSplit"}"#), "null"));
        assert!(!with(
            &sequence(r#"{"type": "Digits", "individual_digits": true}"#),
            "null"
        ));
        assert!(!with("null", "null"), "no pre-tokenizer: the model sees spaces");
        assert!(!with(
            r#"{"type": "Whitespace"}"#,
            r#"{"type": "Replace", "pattern": {"String": " "}, "content": ""}"#
        ));
        assert!(with(
            r#"{"type": "Whitespace"}"#,
            r#"{"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]}"#
        ));
    }

    #[test]
    fn cut_encodings_equal_whole_ones_on_the_sample_reviews_and_odd_texts() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/imdb-sample/test.parquet");
        let df = crate::data::table::read(std::path::Path::new(path), crate::data::table::Format::Parquet).unwrap();
        let mut texts: Vec<String> = crate::data::table::texts(&df, "text")
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let zero_width = "\u{200b} ".repeat(300);
        texts.extend([
            format!("{zero_width}words after three hundred that vanish"),
            "[SEP] [CLS] literal specials ".repeat(60),
            "short".into(),
            String::new(),
            "漢字と かな まじり ".repeat(50),
            "ﬁ ligatures ﬂ and a\u{301}ccents ".repeat(60),
        ]);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut cut_somewhere = 0;
        for max_length in [16, 128, 512] {
            let tokenizer = bert(max_length);
            let whole = encode_truncated(&tokenizer, &texts, max_length, true, false).unwrap();
            let cut = encode_truncated(&tokenizer, &texts, max_length, true, true).unwrap();
            for ((a, b), text) in whole.iter().zip(&cut).zip(&texts) {
                assert_eq!(a.get_ids(), b.get_ids(), "max_length {max_length}: {text}");
                assert_eq!(a.get_type_ids(), b.get_type_ids());
            }
            cut_somewhere += texts
                .iter()
                .filter(|t| first_words(t, max_length).len() < t.len())
                .count();
        }
        assert!(
            cut_somewhere > 1000,
            "the texts were long enough to cut: {cut_somewhere}"
        );
    }
}
