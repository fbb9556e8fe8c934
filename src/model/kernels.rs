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

/// Runs `work` compiled for AVX-512F, or AVX2 with FMA, when the CPU has
/// them, and for the baseline instruction set otherwise. For element-wise
/// work with separate multiplies and adds (Rust never fuses them), explicit
/// `mul_add`s (a library call on the baseline set) and correctly rounded
/// square roots and divisions, every version gives the same bits.
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
        #[target_feature(enable = "avx2,fma")]
        fn avx2<T>(work: impl FnOnce() -> T) -> T {
            work()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(work) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2(work) };
        }
    }
    work()
}

/// Columns of a packed panel of [`Packed`]: one AVX-512 vector of floats.
const PANEL: usize = 16;

/// Most values a depth block of [`Packed`] holds (256 KiB, a quarter of
/// this core's L2 cache), so that a block's panels stay in cache while every
/// row tile of the left operand passes over them.
const BLOCK_VALUES: usize = 1 << 16;

/// The right operand of a product, `b: [depth, n]` row-major, packed once
/// for any number of products: cut into depth blocks, each block into
/// panels of [`PANEL`] columns stored contiguously (the last panel
/// zero-padded). A recurrent layer packs its weights once per run and
/// multiplies them at every time step. Packing moves values only, so the
/// products give the bits of a plain loop (see [`matmul_add`]).
pub struct Packed {
    values: Vec<f32>,
    depth: usize,
    n: usize,
    /// Rows of `b` per depth block (the last block may hold fewer).
    block: usize,
}

impl Packed {
    /// Packs row-major `b: [depth, n]`.
    pub fn new(b: &[f32], depth: usize, n: usize) -> Packed {
        assert_eq!(b.len(), depth * n, "b is [depth, n]");
        let panels = n.div_ceil(PANEL);
        let block = (BLOCK_VALUES / (panels * PANEL).max(1)).clamp(16, 512);
        let mut values = vec![0.0f32; depth * panels * PANEL];
        for start in (0..depth).step_by(block) {
            let len = block.min(depth - start);
            let block_values = &mut values[start * panels * PANEL..(start + len) * panels * PANEL];
            for (p, panel) in block_values.chunks_exact_mut(len * PANEL).enumerate() {
                let columns = PANEL.min(n - p * PANEL);
                for (d, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                    let from = (start + d) * n + p * PANEL;
                    row[..columns].copy_from_slice(&b[from..from + columns]);
                }
            }
        }
        Packed {
            values,
            depth,
            n,
            block,
        }
    }

    /// `out[i, :] += sum_d a[i, d] * b[d, :]` for row-major `a: [m, depth]`,
    /// `out: [m, n]`; see [`matmul_add`].
    pub fn matmul_add(&self, a: &[f32], out: &mut [f32]) {
        assert_eq!(
            a.len() / self.depth.max(1),
            out.len() / self.n.max(1),
            "a and out disagree on rows"
        );
        self.run::<false>(a, self.depth, 1, out);
    }

    /// `out[p, :] += sum_i a[i, p] * b[i, :]` for row-major `a: [depth, k]`,
    /// `out: [k, n]`, `a` read transposed in place; see [`matmul_tn_add`].
    pub fn matmul_tn_add(&self, a: &[f32], k: usize, out: &mut [f32]) {
        assert_eq!(a.len(), self.depth * k, "a is [depth, k]");
        self.run::<false>(a, 1, k, out);
    }

    /// `out[i, :] += sum_d a[i * row_stride + d * depth_stride] * b[d, :]`
    /// (`a` a matrix, or with the strides swapped its transpose, read in
    /// place), each term a fused multiply-add: one rounding instead of two,
    /// at twice the rate on cores whose adds share the multiply-add pipes.
    /// Every element sums over `d` in order on every instruction set, as
    /// in [`Packed::matmul_add`]. For the BERT encoder's dense layers, whose
    /// bits no lock holds.
    pub fn fused_matmul_add(&self, a: &[f32], row_stride: usize, depth_stride: usize, out: &mut [f32]) {
        self.run::<true>(a, row_stride, depth_stride, out);
    }

    /// [`product`] of `a` read through its strides, compiled for the
    /// widest instruction set the CPU has.
    fn run<const FUSED: bool>(&self, a: &[f32], row_stride: usize, depth_stride: usize, out: &mut [f32]) {
        let lhs = Lhs {
            values: a,
            row_stride,
            depth_stride,
        };
        widest_simd(
            #[inline(always)]
            || product::<FUSED>(lhs, self, out),
        );
    }

    /// The panels of depth block `start..start + len`, each `[len, PANEL]`.
    #[inline(always)]
    fn block(&self, start: usize, len: usize) -> &[f32] {
        let width = self.n.div_ceil(PANEL) * PANEL;
        &self.values[start * width..(start + len) * width]
    }
}

/// The left operand of a product, `lhs(i, d) = values[i * row_stride + d *
/// depth_stride]`: a matrix or, with the strides swapped, its transpose,
/// read in place.
#[derive(Clone, Copy)]
struct Lhs<'a> {
    values: &'a [f32],
    row_stride: usize,
    depth_stride: usize,
}

/// `out[i, :] += sum_d lhs(i, d) * b[d, :]`, `out: [rows, n]`. Every element
/// sums over `d` in order, with a multiply and an add per term (a fused
/// multiply-add with `FUSED`), whatever the blocking, tile shape or
/// instruction set, so results are bit-for-bit those of a plain loop: a
/// depth block adds its terms to the sums the block before it stored.
/// Register tiles of 8 rows by [`WIDE`] panels keep 24 independent sums in
/// registers; the panels left over go through tiles of one panel.
#[inline(always)]
fn product<const FUSED: bool>(lhs: Lhs, b: &Packed, out: &mut [f32]) {
    let rows = out.len() / b.n.max(1);
    for start in (0..b.depth).step_by(b.block) {
        let len = b.block.min(b.depth - start);
        let panels = b.block(start, len);
        let mut i = 0;
        while i + 8 <= rows {
            row_tiles::<8, FUSED>(lhs.block(i, start, 8, len), panels, b.n, &mut out[i * b.n..]);
            i += 8;
        }
        if rows - i >= 4 {
            row_tiles::<4, FUSED>(lhs.block(i, start, 4, len), panels, b.n, &mut out[i * b.n..]);
            i += 4;
        }
        if rows - i >= 2 {
            row_tiles::<2, FUSED>(lhs.block(i, start, 2, len), panels, b.n, &mut out[i * b.n..]);
            i += 2;
        }
        if rows - i == 1 {
            row_tiles::<1, FUSED>(lhs.block(i, start, 1, len), panels, b.n, &mut out[i * b.n..]);
        }
    }
}

impl<'a> Lhs<'a> {
    /// Rows `i..i + rows` over depth `start..start + len`, read in place.
    #[inline(always)]
    fn block(self, i: usize, start: usize, rows: usize, len: usize) -> LhsBlock<'a> {
        let values = &self.values[i * self.row_stride + start * self.depth_stride..];
        if rows > 0 && len > 0 {
            assert!(
                values.len() > (rows - 1) * self.row_stride + (len - 1) * self.depth_stride,
                "the block lies in the left operand"
            );
        }
        LhsBlock {
            values,
            row_stride: self.row_stride,
            depth_stride: self.depth_stride,
            rows,
            len,
        }
    }
}

/// Some rows of the left operand over one depth block of `len` steps:
/// `(r, d)` is `values[r * row_stride + d * depth_stride]`, in bounds for
/// `r < rows` and `d < len` ([`Lhs::block`] checks).
#[derive(Clone, Copy)]
struct LhsBlock<'a> {
    values: &'a [f32],
    row_stride: usize,
    depth_stride: usize,
    rows: usize,
    len: usize,
}

impl LhsBlock<'_> {
    /// Value `(r, d)`.
    #[inline(always)]
    fn at(&self, r: usize, d: usize) -> f32 {
        self.values[r * self.row_stride + d * self.depth_stride]
    }

    /// Pointers to the first value of each of `R` rows.
    #[inline(always)]
    fn row_starts<const R: usize>(&self) -> [*const f32; R] {
        // `wrapping_add` (no bounds claim): `Lhs::block` checked every row that is read.
        std::array::from_fn(|r| self.values.as_ptr().wrapping_add(r * self.row_stride))
    }
}

/// `R` rows of [`product`] (`out` starts at the first) over one depth block,
/// one panel at a time, the rows' values read in place.
#[inline(always)]
fn row_tiles<const R: usize, const FUSED: bool>(lhs: LhsBlock, panels: &[f32], n: usize, out: &mut [f32]) {
    let len = lhs.len;
    let full = n / PANEL;
    let mut p = 0;
    while p + WIDE <= full {
        let column = p * PANEL;
        wide_tile::<R, FUSED>(
            &mut out[column..],
            n,
            lhs,
            &panels[p * len * PANEL..][..WIDE * len * PANEL],
        );
        p += WIDE;
    }
    for (p, panel) in panels.chunks_exact(len * PANEL).enumerate().skip(p) {
        let column = p * PANEL;
        let columns = PANEL.min(n - column);
        if columns == PANEL {
            tile::<R, FUSED>(&mut out[column..], n, lhs, panel);
        } else {
            // The last, partial panel: through a whole tile with zero columns.
            let mut part = vec![0.0f32; R * PANEL];
            for r in 0..R {
                part[r * PANEL..][..columns].copy_from_slice(&out[r * n + column..][..columns]);
            }
            tile::<R, FUSED>(&mut part, PANEL, lhs, panel);
            for r in 0..R {
                out[r * n + column..][..columns].copy_from_slice(&part[r * PANEL..][..columns]);
            }
        }
    }
}

/// Panels a [`wide_tile`] covers: `8 x WIDE` sums of 16 floats and `WIDE`
/// panel rows take 8 * WIDE + WIDE + 1 of AVX-512's 32 registers.
const WIDE: usize = 3;

/// [`tile`] over `WIDE` adjacent full panels (`panels: [WIDE, len, PANEL]`)
/// at once, so that each value of `lhs` is read once for all of them. The
/// sums are those of `WIDE` separate tiles.
#[inline(always)]
fn wide_tile<const R: usize, const FUSED: bool>(out: &mut [f32], stride: usize, lhs: LhsBlock, panels: &[f32]) {
    let len = lhs.len;
    assert!(
        panels.len() >= WIDE * len * PANEL,
        "WIDE panels of a row per depth step"
    );
    assert!(
        out.len() >= (R - 1) * stride + WIDE * PANEL,
        "R rows of WIDE panels' width"
    );
    assert!(lhs.rows >= R, "R rows of the left operand");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the asserts and `Lhs::block` keep every access in bounds.
        return unsafe { wide_tile_avx512::<R, FUSED>(out, stride, lhs, panels) };
    }
    for (c, panel) in panels.chunks_exact(len * PANEL).take(WIDE).enumerate() {
        tile::<R, FUSED>(&mut out[c * PANEL..], stride, lhs, panel);
    }
}

/// [`wide_tile`] in AVX-512 registers, a separate multiply and add per
/// term (a fused multiply-add with `FUSED`); masked loads and stores as in
/// [`tile_avx512`].
///
/// # Safety
/// The CPU has AVX-512F, `out` holds `(R - 1) * stride + WIDE * PANEL`
/// values, `panels` `WIDE * lhs.len * PANEL` and `lhs` `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_tile_avx512<const R: usize, const FUSED: bool>(
    out: &mut [f32],
    stride: usize,
    lhs: LhsBlock,
    panels: &[f32],
) {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };
    let len = lhs.len;
    let rows = lhs.row_starts::<R>();
    let (out, panels) = (out.as_mut_ptr(), panels.as_ptr());
    // SAFETY (every load and store): within the lengths the caller guarantees.
    let mut sums = [[_mm512_setzero_ps(); R]; WIDE];
    for (c, row_sums) in sums.iter_mut().enumerate() {
        for (r, sum) in row_sums.iter_mut().enumerate() {
            *sum = unsafe { _mm512_maskz_loadu_ps(!0, out.add(r * stride + c * PANEL)) };
        }
    }
    for d in 0..len {
        let mut b = [_mm512_setzero_ps(); WIDE];
        for (c, row) in b.iter_mut().enumerate() {
            *row = unsafe { _mm512_maskz_loadu_ps(!0, panels.add((c * len + d) * PANEL)) };
        }
        let offset = d * lhs.depth_stride;
        for r in 0..R {
            let x = _mm512_set1_ps(unsafe { *rows[r].add(offset) });
            for c in 0..WIDE {
                sums[c][r] = if FUSED {
                    _mm512_fmadd_ps(x, b[c], sums[c][r])
                } else {
                    _mm512_add_ps(sums[c][r], _mm512_mul_ps(x, b[c]))
                };
            }
        }
    }
    for (c, row_sums) in sums.into_iter().enumerate() {
        for (r, sum) in row_sums.into_iter().enumerate() {
            unsafe { _mm512_mask_storeu_ps(out.add(r * stride + c * PANEL), !0, sum) };
        }
    }
}

/// One `R` x [`PANEL`] register tile: rows `r * stride..r * stride + PANEL`
/// of `out` (`r < R`) plus `lhs` (`R` rows, `len` depth steps) times
/// `panel: [len, PANEL]`, in AVX-512 registers where the CPU has them.
/// Written out with intrinsics: left to itself, LLVM vectorized the tile
/// across its rows and ran 13 times slower.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tile<const R: usize, const FUSED: bool>(out: &mut [f32], stride: usize, lhs: LhsBlock, panel: &[f32]) {
    assert!(panel.len() >= lhs.len * PANEL, "a panel row per depth step");
    assert!(out.len() >= (R - 1) * stride + PANEL, "R rows of a panel's width");
    assert!(lhs.rows >= R, "R rows of the left operand");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the asserts and `Lhs::block` keep every access in bounds.
        return unsafe { tile_avx512::<R, FUSED>(out, stride, lhs, panel) };
    }
    let mut acc = [[0.0f32; PANEL]; R];
    for r in 0..R {
        acc[r].copy_from_slice(&out[r * stride..][..PANEL]);
    }
    for d in 0..lhs.len {
        let b_row = &panel[d * PANEL..][..PANEL];
        for r in 0..R {
            let x = lhs.at(r, d);
            for l in 0..PANEL {
                acc[r][l] = if FUSED {
                    x.mul_add(b_row[l], acc[r][l])
                } else {
                    acc[r][l] + x * b_row[l]
                };
            }
        }
    }
    for r in 0..R {
        out[r * stride..][..PANEL].copy_from_slice(&acc[r]);
    }
}

/// [`tile`] in AVX-512 registers: a separate multiply and add per term (a
/// fused multiply-add with `FUSED`), as the portable loop, so both give the
/// same bits. Loads and stores are the masked forms with every lane set: the
/// dev profile checks each plain `_mm512_loadu_ps` (a `read_unaligned`) for
/// overlap, which took the inner loop through the stack at three quarters
/// of the speed.
///
/// # Safety
/// The CPU has AVX-512F, `out` holds `(R - 1) * stride + PANEL` values,
/// `panel` `lhs.len * PANEL` and `lhs` `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const FUSED: bool>(out: &mut [f32], stride: usize, lhs: LhsBlock, panel: &[f32]) {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };
    let rows = lhs.row_starts::<R>();
    let (out, panel) = (out.as_mut_ptr(), panel.as_ptr());
    // SAFETY (every load and store): within the lengths the caller guarantees.
    let mut sums = [_mm512_setzero_ps(); R];
    for (r, sum) in sums.iter_mut().enumerate() {
        *sum = unsafe { _mm512_maskz_loadu_ps(!0, out.add(r * stride)) };
    }
    for d in 0..lhs.len {
        let b_row = unsafe { _mm512_maskz_loadu_ps(!0, panel.add(d * PANEL)) };
        let offset = d * lhs.depth_stride;
        for r in 0..R {
            let x = _mm512_set1_ps(unsafe { *rows[r].add(offset) });
            sums[r] = if FUSED {
                _mm512_fmadd_ps(x, b_row, sums[r])
            } else {
                _mm512_add_ps(sums[r], _mm512_mul_ps(x, b_row))
            };
        }
    }
    for (r, sum) in sums.into_iter().enumerate() {
        unsafe { _mm512_mask_storeu_ps(out.add(r * stride), !0, sum) };
    }
}

/// `out[i, :] += sum_p a[i, p] * b[p, :]` for row-major `a: [m, k]`,
/// `b: [k, n]`, `out: [m, n]`, every element summing over `p` in order.
pub fn matmul_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    Packed::new(b, k, n).matmul_add(a, out);
}

/// `out[p, :] += sum_i a[i, p] * b[i, :]` (`a` transposed) for row-major
/// `a: [m, k]`, `b: [m, n]`, `out: [k, n]`, summing over `i` in order.
pub fn matmul_tn_add(a: &[f32], b: &[f32], out: &mut [f32], k: usize, n: usize) {
    let m = b.len() / n.max(1);
    Packed::new(b, m, n).matmul_tn_add(a, k, out);
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

    /// A named in-place form of an element-wise function.
    pub type InPlace<'a> = (&'a str, &'a dyn Fn(&mut [f32]));

    /// Asserts that each of `candidates` (a name and an in-place form of the
    /// function) gives the bits of `reference` on every `step`-th float bit
    /// pattern, NaN for NaN, with denormals kept and flushed; `name` names
    /// the function in the failure message.
    pub fn assert_every_float_matches(step: usize, name: &str, candidates: &[InPlace], reference: impl Fn(f32) -> f32) {
        for flushed in [false, true] {
            let _flush = flushed.then(super::FlushDenormals::start);
            let mut first = 0u64;
            while first <= u64::from(u32::MAX) {
                let bits: Vec<u32> = (first..=u64::from(u32::MAX))
                    .step_by(step)
                    .take(1 << 16)
                    .map(|b| b as u32)
                    .collect();
                let inputs: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
                let expected: Vec<f32> = inputs.iter().map(|&x| reference(x)).collect();
                for (what, candidate) in candidates {
                    let mut ours = inputs.clone();
                    candidate(&mut ours);
                    for ((&b, &got), &expected) in bits.iter().zip(&ours).zip(&expected) {
                        assert!(
                            got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan()),
                            "{name}({:e}) ({what}, bits {b:#x}, flushed {flushed}): {got:e} vs glibc {expected:e}",
                            f32::from_bits(b)
                        );
                    }
                }
                first += (bits.len() * step) as u64;
            }
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
    /// for widths, row counts and depths that use every kind of tile, partial
    /// panels and several depth blocks.
    #[test]
    fn products_equal_in_order_sums_bit_for_bit() {
        let shapes = [1, 5, 8, 10, 16, 24, 37, 90, 96]
            .into_iter()
            .flat_map(|n| [(n, 3, 11), (n, 9, 11), (n, 15, 11)])
            .chain([(300, 21, 700), (40, 1, 1300), (17, 8, 600)]);
        for (n, m, k) in shapes {
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
            assert_eq!(out, expected, "matmul_add, n = {n}, m = {m}, k = {k}");

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
            assert_eq!(out, expected, "matmul_tn_add, n = {n}, m = {m}, k = {k}");
        }
    }

    /// The fused products sum in order with one rounding per term, with the
    /// left operand as it lies and transposed: the bits of a `mul_add` loop.
    #[test]
    fn fused_products_equal_in_order_fused_sums_bit_for_bit() {
        for (n, m, k) in [
            (5, 3, 11),
            (48, 9, 40),
            (96, 17, 600),
            (37, 8, 1300),
            (1536 / 8, 10, 70),
        ] {
            let (a, b, start) = (values(m * k, 7), values(k * n, 8), values(m * n, 9));
            let packed = Packed::new(&b, k, n);
            let a_t = transpose(&a, m, k);
            for (lhs, row_stride, depth_stride, what) in [(&a, k, 1, "rows"), (&a_t, 1, m, "transposed")] {
                let mut expected = start.clone();
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            let x = lhs[i * row_stride + p * depth_stride];
                            expected[i * n + j] = x.mul_add(b[p * n + j], expected[i * n + j]);
                        }
                    }
                }
                let mut out = start.clone();
                packed.fused_matmul_add(lhs, row_stride, depth_stride, &mut out);
                assert_eq!(out, expected, "{what}, n = {n}, m = {m}, k = {k}");
                let mut unfused = start.clone();
                matmul_add(&a, &b, &mut unfused, k, n);
                assert_ne!(
                    out, unfused,
                    "fused and unfused sums differ somewhere, n = {n}, m = {m}, k = {k}"
                );
            }
        }
    }
}
