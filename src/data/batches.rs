//! Model-ready batches: padded id matrices stored per split as safetensors,
//! and a deterministic batch plan per seed and epoch with dynamic padding
//! and optional length bucketing.

use std::path::Path;

use anyhow::Context as _;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::rng;

/// An end of a token sequence: where padding goes (vectorize) or which end
/// truncation cuts (tokenize).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// After the tokens (the default): pads after them, cuts their end.
    #[default]
    Right,
    /// Before the tokens: pads before them, so the last real token is the last
    /// column; cuts their beginning.
    Left,
}

/// One split as padded tensors: `ids` is `rows x width`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitTensors {
    /// Token ids, padded to `width` on `side`.
    pub ids: Vec<u32>,
    /// Columns of `ids`.
    pub width: usize,
    /// The true length of each row.
    pub lengths: Vec<u32>,
    /// The label of each row.
    pub labels: Vec<i64>,
    /// Segment ids laid out as `ids` (padded with 0), for sentence pairs.
    pub type_ids: Option<Vec<u32>>,
    /// A frozen encoder's last hidden states (`encode`), `rows x width x dim`.
    pub features: Option<Features>,
}

/// Per-token features `[rows, width, dim]`, row-major, zero at padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Values per token.
    pub dim: usize,
    /// The values, as stored.
    pub values: FeatureValues,
}

/// How features are stored: f16 halves their size.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValues {
    /// Half precision.
    F16(Vec<half::f16>),
    /// Single precision.
    F32(Vec<f32>),
}

impl Features {
    /// Appends the f32 values of `count` tokens starting at token `start` to `out`.
    fn extend(&self, start: usize, count: usize, out: &mut Vec<f32>) {
        let range = start * self.dim..(start + count) * self.dim;
        match &self.values {
            FeatureValues::F16(values) => out.extend(values[range].iter().map(|v| v.to_f32())),
            FeatureValues::F32(values) => out.extend_from_slice(&values[range]),
        }
    }

    /// Bytes of the stored values.
    pub fn bytes(&self) -> usize {
        match &self.values {
            FeatureValues::F16(values) => values.len() * 2,
            FeatureValues::F32(values) => values.len() * 4,
        }
    }
}

impl SplitTensors {
    /// Pads ragged rows into a matrix as wide as the longest row.
    pub fn pad(rows: &[&[u32]], labels: Vec<i64>, side: Side, pad_id: u32) -> SplitTensors {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; rows.len() * width];
        for (i, row) in rows.iter().enumerate() {
            let start = i * width + if side == Side::Left { width - row.len() } else { 0 };
            ids[start..start + row.len()].copy_from_slice(row);
        }
        SplitTensors {
            ids,
            width,
            lengths: rows.iter().map(|r| r.len() as u32).collect(),
            labels,
            type_ids: None,
            features: None,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Writes `ids`, `lengths`, `labels` (and `type_ids`) as a safetensors file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let ids = bytes(&self.ids);
        let lengths = bytes(&self.lengths);
        let labels: Vec<u8> = self.labels.iter().flat_map(|x| x.to_le_bytes()).collect();
        let type_ids = self.type_ids.as_deref().map(bytes);
        let rows = self.rows();
        let mut tensors = vec![
            ("ids", TensorView::new(Dtype::U32, vec![rows, self.width], &ids)?),
            ("lengths", TensorView::new(Dtype::U32, vec![rows], &lengths)?),
            ("labels", TensorView::new(Dtype::I64, vec![rows], &labels)?),
        ];
        if let Some(type_ids) = &type_ids {
            tensors.push((
                "type_ids",
                TensorView::new(Dtype::U32, vec![rows, self.width], type_ids)?,
            ));
        }
        let features = self.features.as_ref().map(|f| match &f.values {
            FeatureValues::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            FeatureValues::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        });
        if let (Some(f), Some((dtype, bytes))) = (&self.features, &features) {
            tensors.push((
                "features",
                TensorView::new(*dtype, vec![rows, self.width, f.dim], bytes)?,
            ));
        }
        safetensors::serialize_to_file(tensors, None, path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Reads a file written by [`SplitTensors::save`].
    pub fn load(path: &Path) -> anyhow::Result<SplitTensors> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file =
            SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not safetensors", path.display()))?;
        let u32s = |name: &str| -> anyhow::Result<(Vec<u32>, Vec<usize>)> {
            let t = file.tensor(name)?;
            anyhow::ensure!(t.dtype() == Dtype::U32, "{name} in {} is not u32", path.display());
            let values = t
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            Ok((values, t.shape().to_vec()))
        };
        let (ids, shape) = u32s("ids")?;
        let (lengths, _) = u32s("lengths")?;
        let labels_view = file.tensor("labels")?;
        anyhow::ensure!(
            labels_view.dtype() == Dtype::I64,
            "labels in {} are not i64",
            path.display()
        );
        let labels = labels_view
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let type_ids = match file.names().contains(&"type_ids") {
            true => Some(u32s("type_ids")?.0),
            false => None,
        };
        let features = match file.names().contains(&"features") {
            true => {
                let view = file.tensor("features")?;
                let dim = view.shape().get(2).copied().unwrap_or(0);
                let values = match view.dtype() {
                    Dtype::F16 => FeatureValues::F16(
                        view.data()
                            .chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                    Dtype::F32 => FeatureValues::F32(
                        view.data()
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                            .collect(),
                    ),
                    other => anyhow::bail!("features in {} are {other:?}, not f16 or f32", path.display()),
                };
                Some(Features { dim, values })
            }
            false => None,
        };
        Ok(SplitTensors {
            ids,
            width: shape.get(1).copied().unwrap_or(0),
            lengths,
            labels,
            type_ids,
            features,
        })
    }
}

/// How batches are formed, as chosen in the `vectorize` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batching {
    /// Rows per batch.
    pub batch_size: usize,
    /// Padding side of the stored matrices.
    pub padding: Side,
    /// The padding id.
    pub pad_id: u32,
    /// Trim each batch to its longest row (dynamic padding).
    pub dynamic_padding: bool,
    /// Sort rows by length within windows of this many batches, so batches hold similar lengths.
    pub bucket: Option<usize>,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
}

/// One batch: `ids` is `rows.len() x width`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row indices into the split.
    pub rows: Vec<u32>,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Columns of `ids`.
    pub width: usize,
    /// True lengths.
    pub lengths: Vec<u32>,
    /// Labels.
    pub labels: Vec<i64>,
    /// Segment ids laid out as `ids`, for sentence pairs.
    pub type_ids: Option<Vec<u32>>,
    /// Encoder features `[rows, width, dim]` and their `dim`, when the split has them.
    pub features: Option<(Vec<f32>, usize)>,
}

impl Batching {
    /// The batches of one epoch as row indices. With `shuffle`, the order
    /// depends only on `seed` and `epoch`; without, rows keep their order.
    pub fn plan(&self, lengths: &[u32], seed: u64, epoch: u64, shuffle: bool) -> Vec<Vec<u32>> {
        let mut order: Vec<u32> = if shuffle {
            rng::permutation(&mut rng::stream(seed, &format!("batches/epoch-{epoch}")), lengths.len())
        } else {
            (0..lengths.len() as u32).collect()
        };
        if let Some(bucket) = self.bucket {
            for window in order.chunks_mut(bucket * self.batch_size) {
                window.sort_by_key(|&row| lengths[row as usize]);
            }
        }
        let mut batches: Vec<Vec<u32>> = order.chunks(self.batch_size).map(<[u32]>::to_vec).collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < self.batch_size) {
            batches.pop();
        }
        if shuffle && self.bucket.is_some() {
            rng::shuffle(
                &mut rng::stream(seed, &format!("batch-order/epoch-{epoch}")),
                &mut batches,
            );
        }
        batches
    }

    /// Gathers rows into a batch, trimmed to its longest row when padding is dynamic.
    pub fn batch(&self, data: &SplitTensors, rows: &[u32]) -> Batch {
        let lengths: Vec<u32> = rows.iter().map(|&r| data.lengths[r as usize]).collect();
        let width = if self.dynamic_padding {
            lengths.iter().copied().max().unwrap_or(1).max(1) as usize
        } else {
            data.width
        };
        let offset = if self.padding == Side::Left {
            data.width - width
        } else {
            0
        };
        let gather = |values: &[u32]| {
            let mut out = Vec::with_capacity(rows.len() * width);
            for &row in rows {
                let start = row as usize * data.width + offset;
                out.extend_from_slice(&values[start..start + width]);
            }
            out
        };
        Batch {
            rows: rows.to_vec(),
            ids: gather(&data.ids),
            width,
            lengths,
            labels: rows.iter().map(|&r| data.labels[r as usize]).collect(),
            type_ids: data.type_ids.as_deref().map(gather),
            features: data.features.as_ref().map(|f| {
                let mut values = Vec::with_capacity(rows.len() * width * f.dim);
                for &row in rows {
                    f.extend(row as usize * data.width + offset, width, &mut values);
                }
                (values, f.dim)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(side: Side) -> SplitTensors {
        let rows: Vec<Vec<u32>> = (1..=10).map(|n| (1..=n).collect()).collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        SplitTensors::pad(&refs, (0..10).map(|i| i % 2).collect(), side, 0)
    }

    fn batching(side: Side, bucket: Option<usize>) -> Batching {
        Batching {
            batch_size: 3,
            padding: side,
            pad_id: 0,
            dynamic_padding: true,
            bucket,
            drop_last: false,
        }
    }

    #[test]
    fn padding_sides_and_dynamic_trimming() {
        let right = data(Side::Right);
        assert_eq!(right.width, 10);
        let batch = batching(Side::Right, None).batch(&right, &[0, 2]);
        assert_eq!((batch.width, batch.ids.clone()), (3, vec![1, 0, 0, 1, 2, 3]));
        let left = data(Side::Left);
        let batch = batching(Side::Left, None).batch(&left, &[0, 2]);
        assert_eq!((batch.width, batch.ids), (3, vec![0, 0, 1, 1, 2, 3]));
        assert_eq!(batch.lengths, [1, 3]);
    }

    #[test]
    fn plans_are_deterministic_per_seed_and_epoch() {
        let lengths = data(Side::Right).lengths;
        let b = batching(Side::Right, None);
        let plan = b.plan(&lengths, 1, 0, true);
        assert_eq!(plan, b.plan(&lengths, 1, 0, true));
        assert_ne!(plan, b.plan(&lengths, 1, 1, true));
        assert_eq!(plan.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let mut all: Vec<u32> = plan.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<u32>>());
        assert_eq!(b.plan(&lengths, 1, 0, false)[0], [0, 1, 2]);
    }

    #[test]
    fn buckets_group_similar_lengths() {
        let lengths = data(Side::Right).lengths;
        let plan = batching(Side::Right, Some(4)).plan(&lengths, 3, 0, true);
        for batch in &plan {
            let ls: Vec<u32> = batch.iter().map(|&r| lengths[r as usize]).collect();
            assert!(ls.windows(2).all(|w| w[0] <= w[1]), "sorted within a batch: {ls:?}");
        }
    }

    #[test]
    fn tensors_round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut original = data(Side::Left);
        original.save(&path).unwrap();
        assert_eq!(SplitTensors::load(&path).unwrap(), original);
        original.type_ids = Some(original.ids.iter().map(|&id| u32::from(id > 3)).collect());
        original.save(&path).unwrap();
        let loaded = SplitTensors::load(&path).unwrap();
        assert_eq!(loaded, original);
        let batch = batching(Side::Left, None).batch(&loaded, &[1, 4]);
        assert_eq!(batch.type_ids.unwrap(), [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    }
}
