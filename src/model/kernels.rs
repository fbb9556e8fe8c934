//! Host-side building blocks of the fused operations: reading tensors to
//! host memory and small dense matrix products that sum in a fixed order.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, read_sync};
use burn::tensor::{Device, TensorData};

/// Whether tensors on `device` live in host memory under burn's `flex`
/// backend, where the fused operations run. Other backends (libtorch) get
/// the same operations composed from burn tensor ops.
pub fn runs_fused(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// A float tensor's values on the host.
pub fn host<B: Backend>(tensor: FloatTensor<B>) -> Vec<f32> {
    read_sync(B::float_into_data(tensor))
        .expect("a readable tensor")
        .try_into_vec::<f32>()
        .expect("f32 values")
}

/// Registers host gradients, each with its shape, for the parents of an
/// autodiff node that are tracked (`Some` id); the others' are dropped.
pub fn register_host_grads<B: Backend>(
    grads: &mut Gradients,
    parents: impl IntoIterator<Item = Option<NodeId>>,
    values: impl IntoIterator<Item = (Vec<f32>, Vec<usize>)>,
    device: &B::Device,
) {
    for (parent, (values, shape)) in parents.into_iter().zip(values) {
        if let Some(node) = parent {
            grads.register::<B>(node, B::float_from_data(TensorData::new(values, shape), device));
        }
    }
}

/// Flushes denormal floats to zero on this thread (x86's FTZ and DAZ bits)
/// until dropped. Gradients that vanish over many time steps become denormal,
/// and each operation on a denormal costs some hundred cycles: unflushed, an
/// Elman layer ran 20 times slower than its arithmetic.
pub struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl FlushDenormals {
    #[allow(deprecated)] // `_mm_getcsr` has no replacement yet
    /// Sets FTZ and DAZ; the previous mode comes back on drop.
    pub fn start() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            // SAFETY: MXCSR exists on every x86_64 CPU; bits 15 (FTZ) and 6 (DAZ) only change denormal handling.
            let saved = unsafe { _mm_getcsr() };
            unsafe { _mm_setcsr(saved | 0x8040) };
            FlushDenormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    #[allow(deprecated)]
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: restores the value read in `new`.
        unsafe {
            std::arch::x86_64::_mm_setcsr(self.saved)
        };
    }
}

/// Columns per register block of the matrix products: wide enough to hide
/// the latency of the additions, narrow enough to stay in registers. The
/// rest of a row goes in blocks of 8, the last `n % 8` columns in one block
/// of 8 over a zero-padded copy of theirs.
const BLOCK: usize = 32;

/// `(start, width)` of the column blocks of the first `n` (a multiple of 8) columns.
fn blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let width = match n - start {
            0 => return None,
            r if r >= BLOCK => BLOCK,
            _ => 8,
        };
        start += width;
        Some((start - width, width))
    })
}

/// Runs `$block::<W>(args...)` with the block width `$width` as a constant.
macro_rules! by_width {
    ($width:expr, $block:ident($($arg:expr),*)) => {
        match $width {
            BLOCK => $block::<BLOCK>($($arg),*),
            _ => $block::<8>($($arg),*),
        }
    };
}

/// The last `n % 8` columns of `b: [rows, n]` zero-padded to `[rows, 8]`.
fn pack_tail(b: &[f32], n: usize) -> Vec<f32> {
    let full = n - n % 8;
    let mut packed = vec![0.0f32; b.len() / n * 8];
    for (row, dst) in b.chunks_exact(n).zip(packed.chunks_exact_mut(8)) {
        dst[..n - full].copy_from_slice(&row[full..]);
    }
    packed
}

/// Runs `fill` on an 8-wide accumulator holding `tail` (fewer than 8
/// values) and zeros, and writes the first `tail.len()` back.
#[inline(always)]
fn with_tail(tail: &mut [f32], fill: impl FnOnce(&mut [f32])) {
    let mut acc = [0.0f32; 8];
    acc[..tail.len()].copy_from_slice(tail);
    fill(&mut acc);
    let len = tail.len();
    tail.copy_from_slice(&acc[..len]);
}

/// `out[i, :] += sum_p a[i, p] * b[p, :]` for row-major `a: [m, k]`,
/// `b: [k, n]`, `out: [m, n]`. Every element sums over `p` in order, so the
/// result does not depend on the block width or the instruction set.
pub fn matmul_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    let full = n - n % 8;
    let tail = (full < n).then(|| pack_tail(b, n));
    for (a_row, out_row) in a.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (start, width) in blocks(full) {
            by_width!(width, row_block(a_row, b, n, &mut out_row[start..start + width], start));
        }
        if let Some(packed) = &tail {
            with_tail(&mut out_row[full..], |acc| row_block::<8>(a_row, packed, 8, acc, 0));
        }
    }
}

#[inline(always)]
fn row_block<const W: usize>(a_row: &[f32], b: &[f32], n: usize, out: &mut [f32], start: usize) {
    let mut acc: [f32; W] = (&*out).try_into().expect("a block");
    for (p, &a) in a_row.iter().enumerate() {
        let b: &[f32; W] = b[p * n + start..p * n + start + W].try_into().expect("a block");
        for l in 0..W {
            acc[l] += a * b[l];
        }
    }
    out.copy_from_slice(&acc);
}

/// `out[p, :] += sum_i a[i, p] * b[i, :]` (`a` transposed) for row-major
/// `a: [m, k]`, `b: [m, n]`, `out: [k, n]`, summing over `i` in order.
pub fn matmul_tn_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    let full = n - n % 8;
    let tail = (full < n).then(|| pack_tail(b, n));
    for (p, out_row) in out.chunks_exact_mut(n).enumerate() {
        for (start, width) in blocks(full) {
            by_width!(
                width,
                column_block(a, b, k, n, p, &mut out_row[start..start + width], start)
            );
        }
        if let Some(packed) = &tail {
            with_tail(&mut out_row[full..], |acc| {
                column_block::<8>(a, packed, k, 8, p, acc, 0)
            });
        }
    }
}

#[inline(always)]
fn column_block<const W: usize>(a: &[f32], b: &[f32], k: usize, n: usize, p: usize, out: &mut [f32], start: usize) {
    let mut acc: [f32; W] = (&*out).try_into().expect("a block");
    for (a_row, b_row) in a.chunks_exact(k).zip(b.chunks_exact(n)) {
        let a = a_row[p];
        let b: &[f32; W] = b_row[start..start + W].try_into().expect("a block");
        for l in 0..W {
            acc[l] += a * b[l];
        }
    }
    out.copy_from_slice(&acc);
}

/// `[rows, cols]` row-major `m` transposed.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `matrix: [rows, n]` summed over its rows, in order.
pub fn column_sums(matrix: &[f32], n: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; n];
    for row in matrix.chunks_exact(n) {
        for (sum, &v) in sums.iter_mut().zip(row) {
            *sum += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, salt: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 + salt) % 23) as f32 / 7.0 - 1.5).collect()
    }

    /// Both products give exactly the bits of a plain loop that sums in order,
    /// for widths that use every kind of block.
    #[test]
    fn products_equal_in_order_sums_bit_for_bit() {
        for n in [1, 5, 8, 10, 37, 96] {
            let (m, k) = (3, 11);
            let (a, b, start) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
            let mut expected = start.clone();
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        expected[i * n + j] += a[i * k + p] * b[p * n + j];
                    }
                }
            }
            let mut out = start.clone();
            matmul_add(&a, &b, &mut out, k, n);
            assert_eq!(out, expected, "matmul_add, n = {n}");

            let (a, b, start) = (values(m * k, 4), values(m * n, 5), values(k * n, 6));
            let mut expected = start.clone();
            for p in 0..k {
                for j in 0..n {
                    for i in 0..m {
                        expected[p * n + j] += a[i * k + p] * b[i * n + j];
                    }
                }
            }
            let mut out = start;
            matmul_tn_add(&a, &b, &mut out, k, n);
            assert_eq!(out, expected, "matmul_tn_add, n = {n}");
        }
    }
}
