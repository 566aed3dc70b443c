//! Kernels of the metrics read path (`libs/storage/rollups.py`, `MappedFile` and `MappedReader`).
//!
//! A one-hour query of a few dozen series over a memory-mapped rollup or points map spent most of
//! its time in numpy calls of a microsecond each on a few dozen values: a binary search per series'
//! run and per span end, and a residency check of the pages it is about to read. These do the same
//! loops in one call each. The Python code keeps every decision (which rows, which pages, what to
//! ask the kernel for); these answer the same as the numpy they replace, which
//! `tests/unit/storage/test_maps_native.py` checks on generated runs.

use std::os::raw::{c_int, c_void};

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

extern "C" {
    fn mincore(addr: *mut c_void, length: usize, vec: *mut u8) -> c_int;
}

/// The buffer's elements (C-contiguous), borrowed for as long as the buffer is held.
fn elements<'a, T: Element>(buffer: &'a PyBuffer<T>, name: &str) -> PyResult<&'a [T]> {
    match buffer.as_slice_ptr() {
        // SAFETY: the buffer is held (so its memory stays) and nothing runs Python meanwhile.
        Some(p) => Ok(unsafe { &*p.as_ptr() }),
        None => Err(PyValueError::new_err(format!("{name} is not a contiguous array"))),
    }
}

/// For each run i, lo[i] plus the number of sorted[lo[i]..hi[i]] below `value` (compared as i64,
/// so a key past the stored type's range finds the end of every run, or its start).
fn lower_bounds<T: Copy + Into<i64>>(sorted: &[T], lo: &[i64], hi: &[i64], value: i64) -> PyResult<Vec<i64>> {
    let mut out = Vec::with_capacity(lo.len());
    for (i, (&a, &b)) in lo.iter().zip(hi).enumerate() {
        if a < 0 || a > b || b as usize > sorted.len() {
            return Err(PyValueError::new_err(format!(
                "run {i} [{a}, {b}) is outside the {} sorted values",
                sorted.len()
            )));
        }
        out.push(a + sorted[a as usize..b as usize].partition_point(|&x| x.into() < value) as i64);
    }
    Ok(out)
}

/// `out[i] = lo[i] + searchsorted(sorted[lo[i]:hi[i]], value)` (the first position of each run
/// whose value is >= `value`) for every i, as numpy's `searchsorted` (side "left") per run.
/// `sorted` is a uint32 or int64 array (the stored ts column or a time index); `lo`, `hi` and
/// `out` int64 arrays of one length.
#[pyfunction]
fn search_runs(sorted: &Bound<'_, PyAny>, lo: PyBuffer<i64>, hi: PyBuffer<i64>, value: i64, out: PyBuffer<i64>) -> PyResult<()> {
    let (lo_s, hi_s) = (elements(&lo, "lo")?, elements(&hi, "hi")?);
    if lo_s.len() != hi_s.len() || out.item_count() != lo_s.len() {
        return Err(PyValueError::new_err(format!(
            "lo, hi and out differ in length ({}, {}, {})",
            lo_s.len(),
            hi_s.len(),
            out.item_count()
        )));
    }
    if out.readonly() {
        return Err(PyValueError::new_err("out is read-only"));
    }
    let found = if let Ok(s) = PyBuffer::<u32>::get(sorted) {
        lower_bounds(elements(&s, "sorted")?, lo_s, hi_s, value)?
    } else if let Ok(s) = PyBuffer::<i64>::get(sorted) {
        lower_bounds(elements(&s, "sorted")?, lo_s, hi_s, value)?
    } else {
        return Err(PyTypeError::new_err("sorted must be a uint32 or int64 array"));
    };
    // Written after the search, so an `out` sharing memory with the inputs reads no half answer.
    out.copy_from_slice(sorted.py(), &found)
}

/// Ranges whose pages are at most this many apart are looked at with one mincore: a system call
/// costs about what walking this many pages of the map does.
const GAP_PAGES: usize = 64;

/// Whether every page of the byte ranges [first[i], last[i]) of `map` (a memory map) is in
/// memory, looking only near those pages: one mincore per cluster of ranges less than GAP_PAGES
/// apart (a mincore over the whole span of ranges scattered through a file walks every page
/// between them, which costs tens of microseconds a megabyte for pages not mapped in this process).
/// False when the kernel cannot tell.
#[pyfunction]
fn pages_resident(map: PyBuffer<u8>, first: PyBuffer<i64>, last: PyBuffer<i64>, page_size: usize) -> PyResult<bool> {
    let (first, last) = (elements(&first, "first")?, elements(&last, "last")?);
    if first.len() != last.len() {
        return Err(PyValueError::new_err(format!("first and last differ in length ({}, {})", first.len(), last.len())));
    }
    if page_size == 0 || !page_size.is_power_of_two() {
        return Err(PyValueError::new_err(format!("page_size {page_size} is not a power of two")));
    }
    let (base, size) = (map.buf_ptr() as usize, map.len_bytes());
    if base % page_size != 0 {
        return Err(PyValueError::new_err("map does not start at a page boundary"));
    }
    // Each range as its pages [p, q), in order.
    let mut pages = Vec::with_capacity(first.len());
    for (i, (&a, &b)) in first.iter().zip(last).enumerate() {
        if a < 0 || a > b || b as usize > size {
            return Err(PyValueError::new_err(format!("range {i} [{a}, {b}) is outside the map's {size} bytes")));
        }
        if a < b {
            pages.push((a as usize / page_size, (b as usize).div_ceil(page_size)));
        }
    }
    pages.sort_unstable();
    let mut state: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < pages.len() {
        // A cluster: ranges while the next starts within GAP_PAGES of the furthest end so far.
        let (start, mut end, mut j) = (pages[i].0, pages[i].1, i + 1);
        while j < pages.len() && pages[j].0 <= end + GAP_PAGES {
            end = end.max(pages[j].1);
            j += 1;
        }
        state.clear();
        state.resize(end - start, 0);
        // SAFETY: pages [start, end) lie within the mapping (every range was checked against its
        // size), which the held buffer keeps; mincore only writes one byte a page into `state`.
        let rc = unsafe { mincore((base + start * page_size) as *mut c_void, (end - start) * page_size, state.as_mut_ptr()) };
        if rc != 0 {
            return Ok(false);
        }
        for &(p, q) in &pages[i..j] {
            if state[p - start..q - start].iter().any(|s| s & 1 == 0) {
                return Ok(false);
            }
        }
        i = j;
    }
    Ok(true)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(search_runs, m)?)?;
    m.add_function(wrap_pyfunction!(pages_resident, m)?)?;
    Ok(())
}
