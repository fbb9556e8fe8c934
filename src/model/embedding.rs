//! Embedding lookup with a backward pass that writes the gradient once.
//!
//! burn-flex's embedding backward builds the dense `[vocab, dim]` gradient
//! as a zero tensor that it then copies before scattering into it: two full
//! passes over a table that, for the course models, holds most of the
//! weights. Here the gradient is one zeroed allocation plus a scatter-add of
//! the batch's rows, in token order (deterministic).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension, read_sync};
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};

use super::kernels::{host, runs_fused};

/// The embedding lookup as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait EmbeddingOps: Backend {
    /// Rows `ids: [batch, time]` of `weight: [vocab, dim]`, as `[batch, time, dim]`.
    fn embedding_lookup(weight: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        Self::embedding(weight, ids)
    }
}

impl EmbeddingOps for Flex {}

/// `weight[ids]` on burn tensors: see [`EmbeddingOps::embedding_lookup`];
/// burn's `embedding` off the flex backend.
pub fn embedding_lookup(weight: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
    if !runs_fused(&weight.device()) {
        return embedding(weight, ids);
    }
    Tensor::from_dispatch(<Dispatch as EmbeddingOps>::embedding_lookup(
        weight.into_dispatch(),
        ids.into_dispatch(),
    ))
}

/// The autodiff node of a lookup.
#[derive(Debug)]
struct LookupBackward;

impl<B: Backend> Backward<B, 1> for LookupBackward {
    /// The ids and the table's `[vocab, dim]`.
    type State = (IntTensor<B>, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let device = output_grad.device();
        let (ids, [vocab, dim]) = ops.state;
        let rows = host::<B>(output_grad);
        let ids = read_sync(B::int_into_data(ids)).expect("readable ids").convert::<i64>();
        let ids = ids.as_slice::<i64>().expect("i64 ids");
        let mut dense = vec![0.0f32; vocab * dim];
        for (&id, row) in ids.iter().zip(rows.chunks_exact(dim)) {
            let id = usize::try_from(id).expect("ids are not negative");
            for (sum, &g) in dense[id * dim..(id + 1) * dim].iter_mut().zip(row) {
                *sum += g;
            }
        }
        grads.register::<B>(
            parent.id,
            B::float_from_data(TensorData::new(dense, [vocab, dim]), &device),
        );
    }
}

impl<B: Backend + EmbeddingOps, C: CheckpointStrategy> EmbeddingOps for Autodiff<B, C> {
    fn embedding_lookup(weight: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        let node = weight.node();
        let weight = weight.into_primitive();
        let [vocab, dim] = weight.shape().as_slice().try_into().expect("weight is [vocab, dim]");
        let output = B::embedding_lookup(weight, ids.clone());
        match LookupBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((ids, [vocab, dim]), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::EmbeddingConfig;
    use burn::tensor::Device;

    #[test]
    fn lookup_and_gradient_equal_burns_embedding() {
        let device = Device::flex().autodiff();
        let burns = EmbeddingConfig::new(7, 3).init(&device);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 4, 4, 0, 6, 1], [2, 3]), &device);
        let weights: Vec<f32> = (0..2 * 3 * 3).map(|i| (i as f32 - 8.0) / 3.0).collect();
        let weights = Tensor::<3>::from_data(TensorData::new(weights, [2, 3, 3]), &device);
        let theirs = burns.forward(ids.clone());
        let ours = embedding_lookup(burns.weight.val(), ids);
        assert_eq!(ours.to_data(), theirs.to_data());
        let expected = burns
            .weight
            .val()
            .grad(&(theirs * weights.clone()).sum().backward())
            .unwrap();
        let actual = burns.weight.val().grad(&(ours * weights).sum().backward()).unwrap();
        assert_eq!(actual.into_data(), expected.into_data());
    }
}
