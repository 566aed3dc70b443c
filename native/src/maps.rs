//! Kernels of the metrics read path (`libs/storage/rollups.py`, `MappedFile` and `MappedReader`).
//!
//! A one-hour query of a few dozen series over a memory-mapped rollup or points map spent most of
//! its time in numpy calls of a microsecond each on a few dozen values: finding its series in a
//! file's index, a binary search per series' run and per span end, gathering the rows between, and
//! a residency check of the pages it is about to read. These do the same loops in one call each. The Python code keeps every decision (which rows, which pages, what to
//! ask the kernel for); these answer the same as the numpy they replace, which
//! `tests/unit/storage/test_maps_native.py` checks on generated runs.

use std::os::raw::{c_int, c_void};

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

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

/// `$body` with `$s` the elements of `$sorted`, a uint32 or int64 array (a stored ts column or a
/// time index); a TypeError for any other array.
macro_rules! with_sorted {
    ($sorted:expr, $s:ident => $body:expr) => {
        if let Ok(buffer) = PyBuffer::<u32>::get($sorted) {
            let $s = elements(&buffer, "sorted")?;
            $body
        } else if let Ok(buffer) = PyBuffer::<i64>::get($sorted) {
            let $s = elements(&buffer, "sorted")?;
            $body
        } else {
            return Err(PyTypeError::new_err("sorted must be a uint32 or int64 array"));
        }
    };
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
    let found = with_sorted!(sorted, s => lower_bounds(s, lo_s, hi_s, value)?);
    // Written after the search, so an `out` sharing memory with the inputs reads no half answer.
    out.copy_from_slice(sorted.py(), &found)
}

/// One file's rows of a read (`MappedReader.read`): for each span j (keys 2j and 2j + 1, its start
/// and end as stored) and each series' run i, the rows [a, b) of the run whose ts lies in the span,
/// found by binary search within the windows the caller narrowed the run to (row 2j of `left` and
/// `right`, shape (keys, runs), for the start; 2j + 1 for the end). Returns the bytes of a and b
/// (int64, span-major), of every row of every range in that order (int64) and of each row's series
/// id (uint64, `ids[i]` for run i), in the machine's own byte order: what numpy did in a dozen
/// calls per span.
fn rows_in_spans<T: Copy + Into<i64>>(
    sorted: &[T],
    left: &[i64],
    right: &[i64],
    keys: &[i64],
    ids: &[u64],
) -> PyResult<(Vec<i64>, Vec<i64>, Vec<i64>, Vec<u64>)> {
    let runs = ids.len();
    let (mut a_out, mut b_out) = (Vec::with_capacity(keys.len() / 2 * runs), Vec::with_capacity(keys.len() / 2 * runs));
    let (mut rows, mut row_ids) = (Vec::new(), Vec::new());
    for j in 0..keys.len() / 2 {
        let (s, e) = (2 * j * runs, (2 * j + 1) * runs);
        let starts = lower_bounds(sorted, &left[s..s + runs], &right[s..s + runs], keys[2 * j])?;
        let ends = lower_bounds(sorted, &left[e..e + runs], &right[e..e + runs], keys[2 * j + 1])?;
        for (i, (&a, &b)) in starts.iter().zip(&ends).enumerate() {
            if b > a {
                rows.extend(a..b);
                row_ids.extend(std::iter::repeat(ids[i]).take((b - a) as usize));
            }
        }
        a_out.extend(starts);
        b_out.extend(ends);
    }
    Ok((a_out, b_out, rows, row_ids))
}

/// Integer types whose every byte is initialised, so their memory can be copied out as bytes.
trait Plain: Copy {}
impl Plain for i64 {}
impl Plain for u64 {}

/// `values` as one bytes object in the machine's own layout (numpy reads it back with the native
/// int64 or uint64 dtype): a single copy, where building the bytes value by value cost about as
/// much as the search on a read of a million rows.
fn bytes_of<'py, T: Plain>(py: Python<'py>, values: &[T]) -> Bound<'py, PyBytes> {
    // SAFETY: T is i64 or u64 (Plain): no padding, every byte initialised; the slice covers
    // exactly the values' memory and lives as long as `values`.
    let raw = unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values)) };
    PyBytes::new(py, raw)
}

/// `rows_in_spans` over a uint32 or int64 `sorted` (the stored ts column), as four bytes objects.
#[pyfunction]
fn span_rows<'py>(
    py: Python<'py>,
    sorted: &Bound<'py, PyAny>,
    left: PyBuffer<i64>,
    right: PyBuffer<i64>,
    keys: PyBuffer<i64>,
    ids: PyBuffer<u64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (left, right) = (elements(&left, "left")?, elements(&right, "right")?);
    let (keys, ids) = (elements(&keys, "keys")?, elements(&ids, "ids")?);
    if keys.len() % 2 != 0 || left.len() != keys.len() * ids.len() || right.len() != left.len() {
        return Err(PyValueError::new_err(format!(
            "{} keys (two a span), {} runs: left and right must hold keys x runs values, not {} and {}",
            keys.len(),
            ids.len(),
            left.len(),
            right.len()
        )));
    }
    let (a, b, rows, row_ids) = with_sorted!(sorted, s => rows_in_spans(s, left, right, keys, ids)?);
    PyTuple::new(py, [bytes_of(py, &a), bytes_of(py, &b), bytes_of(py, &rows), bytes_of(py, &row_ids)])
}

/// For the sorted `wanted` series ids, those a file holds: their positions in its sorted, distinct
/// `series` and the row range [lo, hi) of each one's run (a run ends where `ends` says; the one
/// before it ended where it starts). As numpy's searchsorted, compare and gather in one pass.
fn find_in<E: Copy + Into<i64>>(series: &[u64], ends: &[E], wanted: &[u64]) -> PyResult<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    if series.len() != ends.len() {
        return Err(PyValueError::new_err(format!(
            "series and ends differ in length ({}, {})",
            series.len(),
            ends.len()
        )));
    }
    let (mut at, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    let mut from = 0;
    for &id in wanted {
        // `wanted` is sorted: each search starts where the last one ended.
        let k = from + series[from..].partition_point(|&s| s < id);
        from = k;
        if k < series.len() && series[k] == id {
            at.push(k as i64);
            lo.push(if k == 0 { 0 } else { ends[k - 1].into() });
            hi.push(ends[k].into());
        }
    }
    Ok((at, lo, hi))
}

/// `find_in` over a file's index (`series` uint64, `ends` int32 or int64) for the sorted uint64
/// `wanted`: the bytes of its positions, run starts and run ends (int64 each).
#[pyfunction]
fn find_runs<'py>(
    py: Python<'py>,
    series: PyBuffer<u64>,
    ends: &Bound<'py, PyAny>,
    wanted: PyBuffer<u64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (series, wanted) = (elements(&series, "series")?, elements(&wanted, "wanted")?);
    if wanted.windows(2).any(|w| w[0] > w[1]) {
        return Err(PyValueError::new_err("wanted is not sorted"));
    }
    let (at, lo, hi) = if let Ok(e) = PyBuffer::<i32>::get(ends) {
        find_in(series, elements(&e, "ends")?, wanted)?
    } else if let Ok(e) = PyBuffer::<i64>::get(ends) {
        find_in(series, elements(&e, "ends")?, wanted)?
    } else {
        return Err(PyTypeError::new_err("ends must be an int32 or int64 array"));
    };
    PyTuple::new(py, [bytes_of(py, &at), bytes_of(py, &lo), bytes_of(py, &hi)])
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
    m.add_function(wrap_pyfunction!(span_rows, m)?)?;
    m.add_function(wrap_pyfunction!(find_runs, m)?)?;
    m.add_function(wrap_pyfunction!(pages_resident, m)?)?;
    Ok(())
}
