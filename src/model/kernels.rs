//! Host-side building blocks of the fused operations: reading tensors to
//! host memory, small dense matrix products that sum in a fixed order, and
//! an `exp` that vectorizes.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use std::any::Any;
use std::ops::Deref;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, read_sync};
use burn::tensor::{Device, TensorData};

/// Whether tensors on `device` live in host memory under burn's `flex`
/// backend, where the fused operations run. Other backends (libtorch) get
/// the same operations composed from burn tensor ops.
pub fn runs_fused(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// A float tensor's values in host memory, read with [`host`]: a slice of
/// the flex tensor's own buffer where it allows, a copy otherwise.
#[derive(Debug)]
pub struct HostValues {
    _owner: Owner,
    values: *const f32,
    len: usize,
}

/// What owns the memory a [`HostValues`] points into.
#[derive(Debug)]
#[expect(dead_code, reason = "held for the memory, which is read through the pointer")]
enum Owner {
    /// A contiguous f32 flex tensor, whose buffer is read in place.
    Flex(FlexTensor),
    /// Values copied out of any other tensor.
    Copied(Vec<f32>),
}

// SAFETY: the pointer reads memory `_owner` owns: a flex buffer behind an
// `Arc` (never written while shared: flex copies on write) or a vector, both
// `Send` and `Sync` themselves.
unsafe impl Send for HostValues {}
unsafe impl Sync for HostValues {}

impl HostValues {
    fn new(owner: Owner, values: &[f32]) -> HostValues {
        HostValues {
            values: values.as_ptr(),
            len: values.len(),
            _owner: owner,
        }
    }
}

impl Deref for HostValues {
    type Target = [f32];

    /// Free, unlike flex's own slice accessors (a dynamic call each time),
    /// so kernels may index it in their inner loops.
    fn deref(&self) -> &[f32] {
        // SAFETY: `values` and `len` describe a slice of memory owned by
        // `_owner`, which moving `self` does not move.
        unsafe { std::slice::from_raw_parts(self.values, self.len) }
    }
}

/// A float tensor's values on the host. A contiguous f32 tensor of the flex
/// backend is read in place: its buffer is usually shared (a layer's weight,
/// or an activation autodiff keeps for the backward pass), and reading it
/// through `into_data` copied it twice, on one thread.
pub fn host<B: Backend>(tensor: FloatTensor<B>) -> HostValues {
    let tensor: Box<dyn Any> = Box::new(tensor);
    let data = match tensor.downcast::<FlexTensor>() {
        Ok(flex) => match flex.as_slice::<f32>() {
            Some(values) => {
                let values: *const [f32] = values;
                // SAFETY: `values` points into the buffer `flex` owns, and moving `flex` moves no buffer.
                return HostValues::new(Owner::Flex(*flex), unsafe { &*values });
            }
            None => flex.into_data(),
        },
        Err(other) => {
            let tensor = other.downcast::<FloatTensor<B>>().expect("a float tensor of B");
            read_sync(B::float_into_data(*tensor)).expect("a readable tensor")
        }
    };
    let copied = data.try_into_vec::<f32>().expect("f32 values");
    let values: *const [f32] = copied.as_slice();
    // SAFETY: as above, for the vector's heap buffer.
    HostValues::new(Owner::Copied(copied), unsafe { &*values })
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

/// `e^y` for `y <= 0`: `2^k * p(r)` with `y = k ln 2 + r`, `|r| <= ln 2 / 2`,
/// `p` the Taylor polynomial of degree 7 (relative error about 1e-7).
/// Below -87 it returns `e^-87` (the smallest normal float is `e^-87.3`).
#[inline(always)]
pub fn exp_negative(y: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa
    // bits. Integer conversions (`as i32`) would keep LLVM from vectorizing.
    const ROUND: f32 = 12_582_912.0;
    let y = y.max(-87.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = (y - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // k as an integer (-126..=0, two's complement), then 2^k from its exponent bits.
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
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

/// Runs `work` compiled for AVX-512F, or AVX2, when the CPU has them, and
/// for the baseline instruction set otherwise. For element-wise work with
/// separate multiplies and adds (Rust never fuses them) and correctly
/// rounded square roots and divisions, every version gives the same bits.
/// `work` and the functions it calls are compiled for the wider set only
/// when they are `#[inline(always)]` (closures too: `#[inline(always)] || ...`).
#[inline(always)]
pub fn widest_simd<T>(work: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<T>(work: impl FnOnce() -> T) -> T {
            work()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<T>(work: impl FnOnce() -> T) -> T {
            work()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(work) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(work) };
        }
    }
    work()
}

/// Output rows per register tile of the matrix products: independent sums
/// that hide the latency of the additions.
const TILE_ROWS: usize = 4;

/// The left operand of a product, `lhs(i, d) = values[i * row_stride + d *
/// depth_stride]` for `d < depth`: a matrix or, with the strides swapped,
/// its transpose, read in place.
struct Lhs<'a> {
    values: &'a [f32],
    row_stride: usize,
    depth_stride: usize,
    depth: usize,
}

/// `out[i, :] += sum_d lhs(i, d) * b[d, :]` for `b: [depth, n]`, `out:
/// [rows, n]`. Every element sums over `d` in order, whatever the tile
/// shape or instruction set, so results are bit-for-bit those of a plain
/// loop. Tiles of 4 rows by 16 columns keep 4 independent sums per column
/// in registers; `b` and `out` are zero-padded to a multiple of 8 columns
/// so that every tile is whole.
#[inline(always)]
fn product(lhs: Lhs, b: &[f32], out: &mut [f32], n: usize) {
    let padded_n = n.next_multiple_of(8);
    if padded_n == n {
        return tiles(&lhs, b, out, n);
    }
    let b = pad_columns(b, n, padded_n);
    let mut padded_out = pad_columns(out, n, padded_n);
    tiles(&lhs, &b, &mut padded_out, padded_n);
    for (row, padded) in out.chunks_exact_mut(n).zip(padded_out.chunks_exact(padded_n)) {
        row.copy_from_slice(&padded[..n]);
    }
}

/// [`product`] for `n` a multiple of 8.
#[inline(always)]
fn tiles(lhs: &Lhs, b: &[f32], out: &mut [f32], n: usize) {
    let rows = out.len() / n;
    let mut i = 0;
    while i + TILE_ROWS <= rows {
        tile_columns::<TILE_ROWS>(lhs, b, out, n, i);
        i += TILE_ROWS;
    }
    for i in i..rows {
        tile_columns::<1>(lhs, b, out, n, i);
    }
}

/// Rows `i..i + R` of [`product`], 16 columns at a time, then 8.
#[inline(always)]
fn tile_columns<const R: usize>(lhs: &Lhs, b: &[f32], out: &mut [f32], n: usize, i: usize) {
    let mut start = 0;
    while start + 16 <= n {
        tile::<R, 16>(lhs, b, out, n, i, start);
        start += 16;
    }
    if start < n {
        tile::<R, 8>(lhs, b, out, n, i, start);
    }
}

/// One `R` x `W` register tile of [`product`] at row `i`, column `start`.
/// Index loops over constant ranges (no closures) let LLVM unroll them and
/// keep the tile in vector registers (checked in the disassembly).
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::manual_memcpy)] // see the write-back
fn tile<const R: usize, const W: usize>(lhs: &Lhs, b: &[f32], out: &mut [f32], n: usize, i: usize, start: usize) {
    let mut acc = [[0.0f32; W]; R];
    for r in 0..R {
        acc[r] = out[(i + r) * n + start..][..W].try_into().expect("a tile row");
    }
    // Wrapping index arithmetic: the overflow checks of the test profile
    // in this loop keep LLVM from vectorizing it. Every index is still
    // bounds-checked.
    for d in 0..lhs.depth {
        let b_row: &[f32; W] = b[d.wrapping_mul(n).wrapping_add(start)..][..W]
            .try_into()
            .expect("a tile row");
        for r in 0..R {
            let at = i.wrapping_add(r).wrapping_mul(lhs.row_stride);
            let x = lhs.values[at.wrapping_add(d.wrapping_mul(lhs.depth_stride))];
            add_scaled(&mut acc[r], x, b_row);
        }
    }
    // Element by element: copying the rows out as slices kept LLVM storing
    // the sums to the stack on every step of the loop above.
    for r in 0..R {
        let row = &mut out[(i + r) * n + start..][..W];
        for l in 0..W {
            row[l] = acc[r][l];
        }
    }
}

/// `acc += x * b`, element by element. An index loop: the zip of two
/// iterators carries debug-build checks that keep LLVM from vectorizing it.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn add_scaled<const W: usize>(acc: &mut [f32; W], x: f32, b: &[f32; W]) {
    for l in 0..W {
        acc[l] += x * b[l];
    }
}

/// `b: [rows, n]` with zero columns appended up to `padded_n`.
fn pad_columns(b: &[f32], n: usize, padded_n: usize) -> Vec<f32> {
    let mut padded = vec![0.0f32; b.len() / n * padded_n];
    for (row, dst) in b.chunks_exact(n).zip(padded.chunks_exact_mut(padded_n)) {
        dst[..n].copy_from_slice(row);
    }
    padded
}

/// `out[i, :] += sum_p a[i, p] * b[p, :]` for row-major `a: [m, k]`,
/// `b: [k, n]`, `out: [m, n]`, every element summing over `p` in order.
pub fn matmul_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    let lhs = Lhs {
        values: a,
        row_stride: k,
        depth_stride: 1,
        depth: k,
    };
    widest_simd(
        #[inline(always)]
        || product(lhs, b, out, n),
    );
}

/// `out[p, :] += sum_i a[i, p] * b[i, :]` (`a` transposed) for row-major
/// `a: [m, k]`, `b: [m, n]`, `out: [k, n]`, summing over `i` in order.
pub fn matmul_tn_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    let lhs = Lhs {
        values: a,
        row_stride: 1,
        depth_stride: k,
        depth: a.len() / k,
    };
    widest_simd(
        #[inline(always)]
        || product(lhs, b, out, n),
    );
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

/// What the fused operations' tests share.
#[cfg(test)]
pub mod testing {
    use burn::tensor::{Device, Tensor, TensorData};

    /// A tensor's values.
    pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// A tensor of `shape` with values in [-1.5, 1.6] that `salt` shifts.
    pub fn tensor<const D: usize>(shape: [usize; D], salt: usize, device: &Device) -> Tensor<D> {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 + salt) % 23) as f32 / 7.0 - 1.5).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// Asserts that `work`, run in a rayon pool of each of `threads`
    /// threads, gives what it gives on one thread.
    pub fn assert_same_on_threads<T: PartialEq + std::fmt::Debug + Send>(
        threads: &[usize],
        work: impl Fn() -> T + Sync,
    ) {
        let run = |count: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(count).build().unwrap();
            pool.install(&work)
        };
        let one = run(1);
        for &count in threads {
            assert_eq!(run(count), one, "{count} threads");
        }
    }

    /// Asserts `|a - b| < tolerance * (1 + |b|)` element by element.
    pub fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (u, v) in a.iter().zip(b) {
            assert!((u - v).abs() < tolerance * (1.0 + v.abs()), "{what}: {u} vs {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, salt: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 + salt) % 23) as f32 / 7.0 - 1.5).collect()
    }

    /// Both products give exactly the bits of a plain loop that sums in order,
    /// for widths and row counts that use every kind of tile.
    #[test]
    fn products_equal_in_order_sums_bit_for_bit() {
        for (n, m) in [1, 5, 8, 10, 16, 24, 37, 96].into_iter().flat_map(|n| [(n, 3), (n, 9)]) {
            let k = 11;
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
            assert_eq!(out, expected, "matmul_add, n = {n}, m = {m}");

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
            assert_eq!(out, expected, "matmul_tn_add, n = {n}, m = {m}");
        }
    }
}
