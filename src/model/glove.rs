//! Pretrained word vectors in GloVe's text format (`word v1 ... vd` per line,
//! optionally gzip-compressed), looked up for the words of a vocabulary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;

use crate::data::rng;

/// An embedding matrix built from GloVe vectors, with how many words were found.
pub struct Pretrained {
    /// `vocab_size x dim` values, row-major.
    pub values: Vec<f32>,
    /// Vocabulary words that had a vector.
    pub found: usize,
}

/// Builds the `vocab.len() x dim` matrix for `vocab` (token -> id) from the GloVe
/// file at `path`. Words are looked up as written, then lowercased. Rows of
/// words without a vector are drawn from `N(0, s^2)`, `s` being the standard
/// deviation of all loaded GloVe values (seeded by `seed`), and the padding
/// row is zero.
pub fn load(
    path: &Path,
    dim: usize,
    vocab: &HashMap<String, u32>,
    pad_id: Option<u32>,
    seed: u64,
) -> anyhow::Result<Pretrained> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open GloVe file {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
    let mut values = vec![0f32; size * dim];
    let mut filled = vec![false; size];
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0usize);
    for (number, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), number + 1))?;
        let mut fields = line.split(' ');
        let word = fields.next().unwrap_or_default();
        let vector: Vec<f32> = fields
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}:{}: a value is not a number", path.display(), number + 1))?;
        anyhow::ensure!(
            vector.len() == dim,
            "{}:{}: expected {dim} values after the word (embedding_dim), found {}",
            path.display(),
            number + 1,
            vector.len()
        );
        for &v in &vector {
            sum += f64::from(v);
            sum_sq += f64::from(v) * f64::from(v);
        }
        count += dim;
        let ids = [vocab.get(word).copied(), vocab.get(&word.to_lowercase()).copied()];
        for id in ids.into_iter().flatten() {
            let row = id as usize;
            if !filled[row] {
                values[row * dim..(row + 1) * dim].copy_from_slice(&vector);
                filled[row] = true;
            }
        }
    }
    anyhow::ensure!(count > 0, "{}: no vectors in the file", path.display());
    let mean = sum / count as f64;
    let std = (sum_sq / count as f64 - mean * mean).max(0.0).sqrt() as f32;
    let mut stream = rng::stream(seed, "init/glove-unknown");
    for row in 0..size {
        if !filled[row] && Some(row as u32) != pad_id {
            for v in &mut values[row * dim..(row + 1) * dim] {
                *v = rng::normal(&mut stream) * std;
            }
        }
    }
    if let Some(pad) = pad_id {
        let row = pad as usize;
        values[row * dim..(row + 1) * dim].fill(0.0);
    }
    let found = filled.iter().filter(|&&f| f).count();
    Ok(Pretrained { values, found })
}
