//! Word-level vocabularies trained with the `tokenizers` crate, with a
//! pre-tokenizer compatible with torchtext's `basic_english`.

use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Replace, Sequence};
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

/// torchtext's `basic_english` rules after lowercasing, in its order: each
/// literal is replaced by the text beside it; the result is split on whitespace.
const BASIC_ENGLISH: [(&str, &str); 11] = [
    ("'", " '  "),
    ("\"", ""),
    (".", " . "),
    ("<br />", " "),
    (",", " , "),
    ("(", " ( "),
    (")", " ) "),
    ("!", " ! "),
    ("?", " ? "),
    (";", " "),
    (":", " "),
];

/// Settings of a word-level vocabulary.
#[derive(Debug, Clone)]
pub struct VocabSettings {
    /// Lowercase before splitting.
    pub lowercase: bool,
    /// Apply the `basic_english` punctuation rules (else split on whitespace only).
    pub basic_english: bool,
    /// Drop words seen fewer times than this.
    pub min_freq: u64,
    /// At most this many entries, specials included.
    pub max_size: Option<usize>,
    /// The unknown-word token (id 0).
    pub unk: String,
    /// The padding token (id 1).
    pub pad: String,
}

/// Trains a word-level tokenizer on `texts`; its specials get ids 0 (unk) and 1 (pad).
pub fn train<'a>(settings: &VocabSettings, texts: impl Iterator<Item = &'a str> + Send) -> anyhow::Result<Tokenizer> {
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if settings.lowercase {
        normalizers.push(Lowercase.into());
    }
    if settings.basic_english {
        for (pattern, replacement) in BASIC_ENGLISH {
            normalizers.push(Replace::new(pattern, replacement).map_err(anyhow::Error::msg)?.into());
        }
    }
    let model = WordLevel::builder()
        .unk_token(settings.unk.clone())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(ModelWrapper::WordLevel(model));
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(anyhow::Error::msg)?;
    tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
    let specials = vec![
        AddedToken::from(settings.unk.clone(), true),
        AddedToken::from(settings.pad.clone(), true),
    ];
    let trainer = WordLevelTrainer::builder()
        .min_frequency(settings.min_freq)
        .vocab_size(settings.max_size.unwrap_or(usize::MAX))
        .special_tokens(specials)
        .show_progress(false)
        .build()?;
    let mut trainer = TrainerWrapper::WordLevelTrainer(trainer);
    tokenizer.train(&mut trainer, texts).map_err(anyhow::Error::msg)?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VocabSettings {
        VocabSettings {
            lowercase: true,
            basic_english: true,
            min_freq: 1,
            max_size: None,
            unk: "<unk>".into(),
            pad: "<pad>".into(),
        }
    }

    #[test]
    fn splits_like_basic_english() {
        let text = "Don't watch it.<br />It was \"BAD\", (really)!";
        let tokenizer = train(&settings(), [text].into_iter()).unwrap();
        let encoding = tokenizer.encode(text, false).unwrap();
        // torchtext: ['don', "'", 't', 'watch', 'it', '.', 'it', 'was', 'bad', ',', '(', 'really', ')', '!']
        assert_eq!(
            encoding.get_tokens(),
            [
                "don", "'", "t", "watch", "it", ".", "it", "was", "bad", ",", "(", "really", ")", "!"
            ]
        );
        assert_eq!(tokenizer.token_to_id("<unk>"), Some(0));
        assert_eq!(tokenizer.token_to_id("<pad>"), Some(1));
        assert_eq!(tokenizer.encode("zebra", false).unwrap().get_ids(), [0]);
    }

    #[test]
    fn min_freq_and_max_size_limit_the_vocabulary() {
        let texts = ["a a a b b c", "a b d"];
        let mut s = settings();
        s.min_freq = 2;
        let tokenizer = train(&s, texts.into_iter()).unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), 4, "unk, pad, a, b");
        s.min_freq = 1;
        s.max_size = Some(3);
        let tokenizer = train(&s, texts.into_iter()).unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), 3, "unk, pad and the most frequent word");
        assert_eq!(tokenizer.token_to_id("a"), Some(2));
    }
}
