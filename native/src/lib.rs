//! The service's compiled helpers: ingest's fast path (`encode_ingest_request`, called by
//! `services/realtime/native.py` for every `IngestMetrics` request, gRPC's and the REST body the
//! gateway puts in `json_body`) and kernels of the metrics read path (`maps`).
//!
//! The fast path:
//!
//! `encode_ingest_request` takes a serialised `IngestMetricsRequest` (`proto`: the protobuf read by
//! hand, no message built) and, when it holds columnar `series` and rows, or a REST body (the
//! proto3 JSON of `IngestMetricsRequest`: `encode`, rows in their plainest shape by `rows`, any
//! other body by serde_json), every series and point in it acceptable and written in the usual
//! shapes (snake_case fields, numbers as JSON numbers, no RFC 3339 `timestamp`), returns the batch
//! already encoded for the store: series keys, ids and points as columns, and the WAL record's
//! series. Anything else (a point to reject, an unknown field, a number as a string, an integer
//! value past 2^53, a repeated label key) returns None and the Python path, which is the reference
//! (`ingest.validate`, `json_body.validate_and_encode`), takes the request and says what is wrong
//! with it. So this code never words an error, and its answers equal the Python path's wherever it
//! gives one (tests/unit/test_ingest_native.py compares the two on generated requests and bodies).
//!
//! The parse, checks and encoding run without the GIL; only the Python objects of the answer are
//! built with it, strings and label pairs once per distinct value.

mod maps;
mod proto;
mod rows;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use pyo3::prelude::*;
use rustc_hash::FxHashMap as HashMap;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyTuple};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

// The limits of services/realtime/ingest.py.
const MAX_LABELS: usize = 64;
const MAX_STRING_BYTES: usize = 1024;
const FUTURE_TOLERANCE_MS: i64 = 86_400_000;
const DEFAULT_DATASOURCE: &str = "platform_metrics";
/// Integers up to this magnitude convert to a double exactly; larger ones go to the Python path.
const EXACT_INT: u64 = 1 << 53;

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Default, Clone, PartialEq, Eq, Hash)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// A point's value: a JSON number that is a double exactly (as msgspec reads a `float` field).
#[derive(Default, Clone, Copy)]
struct Value(f64);

impl Value {
    /// A double, unless a negative zero: serde_json gives -0.0 for "-0" too, which msgspec reads as
    /// the integer 0.
    fn of_double(v: f64) -> Option<Value> {
        (!(v == 0.0 && v.is_sign_negative())).then_some(Value(v))
    }

    /// An integer a double holds exactly (at most 2^53 either side of zero).
    fn of_integer(magnitude: u64, v: f64) -> Option<Value> {
        (magnitude <= EXACT_INT).then_some(Value(v))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Value::of_double(v).ok_or_else(|| E::custom("a negative zero"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Value::of_integer(v, v as f64).ok_or_else(|| E::custom("an integer past 2^53"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Value::of_integer(v.unsigned_abs(), v as f64).ok_or_else(|| E::custom("an integer past 2^53"))
            }
        }
        d.deserialize_f64(V)
    }
}

/// A label set as written (pairs in the body's order).
#[derive(Default)]
struct Labels<'a>(Vec<(Str<'a>, Str<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Labels<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Labels<'a>, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(pair) = m.next_entry::<Str<'a>, Str<'a>>()? {
                    out.push(pair);
                }
                Ok(Labels(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A struct read from a JSON object only: serde's derived structs also take an array of their
/// fields in order, which the Python path refuses (or protobuf's parser reads otherwise).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Obj<T>, M::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(m)).map(Obj)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow, default)]
    datasource: Str<'a>,
    #[serde(borrow, default)]
    series: Vec<Obj<JsonSeries<'a>>>,
    #[serde(borrow, default)]
    points: Vec<Obj<JsonPoint<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSeries<'a> {
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    labels: Labels<'a>,
    #[serde(default)]
    timestamps_ms: Vec<i64>,
    #[serde(default)]
    values: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPoint<'a> {
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(default)]
    value: Value,
    #[serde(borrow, default)]
    timestamp: Str<'a>,
    #[serde(default)]
    timestamp_ms: i64,
    /// As written; a `null` stays "null" (not absent), which the label parse below then refuses.
    #[serde(borrow, default, deserialize_with = "present")]
    labels: Option<&'a str>,
}

/// A field's raw JSON, `null` included (serde's Option would read `null` as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    <&RawValue>::deserialize(d).map(|raw| Some(raw.get()))
}

/// A series: its metric and its labels sorted by key (as `SeriesKey`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key<'a> {
    name: Cow<'a, str>,
    labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

fn label_key_ok(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && b.len() <= MAX_STRING_BYTES
}

fn datasource_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The key of an acceptable series; None when its name or labels would be refused (or a label key
/// repeats, which the Python path resolves its own way).
fn key_of<'a>(name: Str<'a>, labels: Labels<'a>) -> Option<Key<'a>> {
    if name.0.is_empty() || name.0.len() > MAX_STRING_BYTES || labels.0.len() > MAX_LABELS {
        return None;
    }
    let mut pairs = Vec::with_capacity(labels.0.len());
    for (k, v) in labels.0 {
        if !label_key_ok(&k.0) || v.0.len() > MAX_STRING_BYTES {
            return None;
        }
        pairs.push((k.0, v.0));
    }
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(Key { name: name.0, labels: pairs })
}

fn time_ok(ts: i64, now_ms: i64) -> bool {
    ts >= 0 && ts <= now_ms.saturating_add(FUTURE_TOLERANCE_MS)
}

/// One accepted series and its points.
struct Accepted<'a> {
    key: Key<'a>,
    ts: Vec<i64>,
    values: Vec<f64>,
}

/// The accepted series of a body, in the Python path's order (columnar series in body order, then
/// the rows' series in order of their first row, a series' rows in row order); None unless every
/// point is accepted.
fn accept<'a>(body: Body<'a>, now_ms: i64) -> Option<(Cow<'a, str>, Vec<Accepted<'a>>)> {
    let datasource = datasource_of(body.datasource.0)?;
    let mut out = Vec::with_capacity(body.series.len());
    for Obj(s) in body.series {
        if s.timestamps_ms.is_empty() && s.values.is_empty() {
            continue;
        }
        let values = s.values.into_iter().map(|v| v.0).collect();
        out.push(columns(s.name, s.labels, s.timestamps_ms, values, now_ms)?);
    }
    // Rows: grouped by (name, labels as written), each distinct one parsed once; two spellings of
    // one label set are one series.
    let first_row_series = out.len();
    let mut by_raw: HashMap<(Cow<'a, str>, &'a str), usize> = HashMap::default();
    let mut by_key: HashMap<Key<'a>, usize> = HashMap::default();
    for Obj(p) in body.points {
        if !p.timestamp.0.is_empty() || !row_ok(p.timestamp_ms, p.value.0, now_ms) {
            return None;
        }
        let raw = p.labels.unwrap_or("{}");
        let index = match by_raw.get(&(p.name.0.clone(), raw)) {
            Some(&i) => i,
            None => {
                let labels: Labels<'a> = serde_json::from_str(raw).ok()?;
                let i = row_series(&mut out, &mut by_key, key_of(p.name.clone(), labels)?);
                by_raw.insert((p.name.0, raw), i);
                i
            }
        };
        debug_assert!(index >= first_row_series);
        out[index].ts.push(p.timestamp_ms);
        out[index].values.push(p.value.0);
    }
    if out.is_empty() {
        return None;
    }
    Some((datasource, out))
}

/// A batch's datasource: the default when empty; None when it would be refused.
fn datasource_of(name: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let name = if name.is_empty() { Cow::Borrowed(DEFAULT_DATASOURCE) } else { name };
    datasource_ok(&name).then_some(name)
}

/// A columnar series with points, accepted whole; None when any of it would be refused.
fn columns<'a>(name: Str<'a>, labels: Labels<'a>, ts: Vec<i64>, values: Vec<f64>, now_ms: i64) -> Option<Accepted<'a>> {
    if ts.len() != values.len() || !ts.iter().all(|&t| time_ok(t, now_ms)) || !values.iter().all(|v| v.is_finite()) {
        return None;
    }
    Some(Accepted { key: key_of(name, labels)?, ts, values })
}

/// Whether a row is acceptable: an epoch-millisecond time (0: none given) in range, a finite value.
fn row_ok(ts: i64, value: f64, now_ms: i64) -> bool {
    ts != 0 && time_ok(ts, now_ms) && value.is_finite()
}

/// The position in `out` of the rows' series of `key`, added on its first row (rows' series are
/// kept apart from the columnar ones, as the Python path keeps them).
fn row_series<'a>(out: &mut Vec<Accepted<'a>>, by_key: &mut HashMap<Key<'a>, usize>, key: Key<'a>) -> usize {
    *by_key.entry(key).or_insert_with_key(|key| {
        out.push(Accepted { key: key.clone(), ts: Vec::new(), values: Vec::new() });
        out.len() - 1
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_size(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_field(out: &mut Vec<u8>, tag: u8, data: &[u8]) {
    out.push(tag);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// `series_id`: blake2b (8-byte digest) of the metric and "\0key\1value" for each sorted label.
fn series_id(key: &Key) -> u64 {
    let mut state = blake2b_simd::Params::new().hash_length(8).to_state();
    state.update(key.name.as_bytes());
    for (k, v) in &key.labels {
        state.update(b"\x00");
        state.update(k.as_bytes());
        state.update(b"\x01");
        state.update(v.as_bytes());
    }
    u64::from_le_bytes(state.finalize().as_bytes().try_into().expect("an 8-byte digest"))
}

/// One `MetricsBatchEvent.series` entry (field 4), as libs/bus/events.py `encode_event` writes it:
/// name, labels (map entries, empty key or value left out), packed varint times, packed doubles.
fn put_series_record(out: &mut Vec<u8>, a: &Accepted, scratch: &mut Vec<u8>) {
    scratch.clear();
    put_field(scratch, 0x0a, a.key.name.as_bytes());
    let mut entry = Vec::new();
    for (k, v) in &a.key.labels {
        entry.clear();
        if !k.is_empty() {
            put_field(&mut entry, 0x0a, k.as_bytes());
        }
        if !v.is_empty() {
            put_field(&mut entry, 0x12, v.as_bytes());
        }
        put_field(scratch, 0x12, &entry);
    }
    let ts_size: usize = a.ts.iter().map(|&t| varint_size(t as u64)).sum();
    let value_size = 8 * a.values.len();
    let size = scratch.len() + 2 + varint_size(ts_size as u64) + ts_size + varint_size(value_size as u64) + value_size;
    out.push(0x22);
    put_varint(out, size as u64);
    out.extend_from_slice(scratch);
    out.push(0x1a);
    put_varint(out, ts_size as u64);
    for &t in &a.ts {
        put_varint(out, t as u64);
    }
    out.push(0x22);
    put_varint(out, value_size as u64);
    for v in &a.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// What the GIL-free part gives: the datasource, the accepted series, their ids, and the columns
/// and records as bytes.
struct Encoded<'a> {
    datasource: Cow<'a, str>,
    series: Vec<Accepted<'a>>,
    accepted: usize,
    lengths: Vec<u8>,
    ts: Vec<u8>,
    values: Vec<u8>,
    sids: Vec<u8>,
    records: Vec<u8>,
}

fn encode(data: &[u8], now_ms: i64) -> Option<Encoded<'_>> {
    let text = std::str::from_utf8(data).ok()?;
    // Rows in their plainest shape by the hand-written reader (rows.rs), anything else by serde.
    let body = match rows::read(text) {
        Some(body) => body,
        None => serde_json::from_str::<Obj<Body>>(text).ok()?.0,
    };
    let (datasource, series) = accept(body, now_ms)?;
    Some(encode_accepted(datasource, series))
}

/// The columns and WAL records of accepted series.
fn encode_accepted<'a>(datasource: Cow<'a, str>, series: Vec<Accepted<'a>>) -> Encoded<'a> {
    let accepted = series.iter().map(|s| s.ts.len()).sum();
    let mut e = Encoded {
        datasource,
        accepted,
        lengths: Vec::with_capacity(8 * series.len()),
        ts: Vec::with_capacity(8 * accepted),
        values: Vec::with_capacity(8 * accepted),
        sids: Vec::with_capacity(8 * series.len()),
        records: Vec::with_capacity(16 * accepted + 64 * series.len()),
        series: Vec::new(),
    };
    let mut scratch = Vec::new();
    for s in &series {
        e.lengths.extend_from_slice(&(s.ts.len() as i64).to_ne_bytes());
        e.sids.extend_from_slice(&series_id(&s.key).to_ne_bytes());
        for &t in &s.ts {
            e.ts.extend_from_slice(&t.to_ne_bytes());
        }
        for v in &s.values {
            e.values.extend_from_slice(&v.to_ne_bytes());
        }
        put_series_record(&mut e.records, s, &mut scratch);
    }
    e.series = series;
    e
}

/// The batch of a serialised `IngestMetricsRequest` (IngestMetrics, over gRPC or REST) when the fast
/// path takes it, else None: it takes columnar `series` and rows, or a REST body in `json_body`
/// alone, every point acceptable (an unknown field, a row with an RFC 3339 time, anything to
/// reject: None, and the Python path takes the request). The batch: (datasource, accepted points,
/// keys as (metric, ((key, value), ...)) tuples, then bytearrays of native int64 lengths, int64
/// times, float64 values and uint64 series ids, and the bytes of the WAL record's `series`
/// entries, which follow the record's head).
#[pyfunction]
fn encode_ingest_request<'py>(py: Python<'py>, data: &Bound<'py, PyBytes>, now_ms: i64) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let bytes = data.as_bytes();
    let found = py.detach(|| match proto::json_body(bytes) {
        Some(body) => encode(body, now_ms),
        None => {
            let (datasource, series) = proto::accept_request(bytes, now_ms)?;
            Some(encode_accepted(datasource, series))
        }
    });
    match found {
        Some(e) => Ok(Some(answer(py, e)?)),
        None => Ok(None),
    }
}

/// The Python tuple of an encoded batch (see `encode_ingest_request`).
fn answer<'py>(py: Python<'py>, e: Encoded<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let mut strings: HashMap<&str, Bound<'py, PyString>> = HashMap::default();
    let mut pairs: HashMap<(&str, &str), Bound<'py, PyTuple>> = HashMap::default();
    let mut keys = Vec::with_capacity(e.series.len());
    for s in &e.series {
        let mut labels = Vec::with_capacity(s.key.labels.len());
        for (k, v) in &s.key.labels {
            let pair = match pairs.get(&(k.as_ref(), v.as_ref())) {
                Some(p) => p.clone(),
                None => {
                    let ks = strings.entry(k.as_ref()).or_insert_with(|| PyString::new(py, k)).clone();
                    let vs = strings.entry(v.as_ref()).or_insert_with(|| PyString::new(py, v)).clone();
                    let p = PyTuple::new(py, [ks, vs])?;
                    pairs.insert((k.as_ref(), v.as_ref()), p.clone());
                    p
                }
            };
            labels.push(pair);
        }
        let name = strings.entry(s.key.name.as_ref()).or_insert_with(|| PyString::new(py, &s.key.name)).clone();
        keys.push(PyTuple::new(py, [name.into_any(), PyTuple::new(py, labels)?.into_any()])?);
    }
    let out = PyTuple::new(
        py,
        [
            PyString::new(py, &e.datasource).into_any(),
            e.accepted.into_pyobject(py)?.into_any(),
            pyo3::types::PyList::new(py, keys)?.into_any(),
            PyByteArray::new(py, &e.lengths).into_any(),
            PyByteArray::new(py, &e.ts).into_any(),
            PyByteArray::new(py, &e.values).into_any(),
            PyByteArray::new(py, &e.sids).into_any(),
            PyBytes::new(py, &e.records).into_any(),
        ],
    )?;
    Ok(out)
}

#[pymodule]
fn platformq_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_ingest_request, m)?)?;
    maps::register(m)
}
