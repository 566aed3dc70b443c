//! gRPC's IngestMetrics request, read from its protobuf bytes: the columnar `series` and the rows
//! (`points`) of an `IngestMetricsRequest` accepted as the JSON path accepts them (`super::accept`),
//! so both encode the same batch; or, for a REST call, the JSON body the gateway put in `json_body`
//! (`json_body`), which the JSON path reads. Only the shapes protobuf writers produce for this message are
//! read (fields 1 to 3; a series' fields 1 to 4, times and values packed or not; a point's 1 to 5
//! with an empty RFC 3339 `timestamp`); anything else returns None and the Python path
//! (`services/realtime/ingest.py`, `validate`) takes the request and words its errors.

use std::borrow::Cow;

use rustc_hash::FxHashMap as HashMap;

use super::{columns, datasource_of, key_of, row_ok, row_series, Accepted, Key, Labels, Str};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// A cursor over protobuf wire bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(out);
            }
        }
        None
    }

    /// (field number, wire type) of the next field.
    fn key(&mut self) -> Option<(u64, u8)> {
        let k = self.varint()?;
        Some((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn fixed64(&mut self) -> Option<u64> {
        let end = self.pos.checked_add(8)?;
        let out = u64::from_le_bytes(self.buf.get(self.pos..end)?.try_into().ok()?);
        self.pos = end;
        Some(out)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// One `common.Series`: name, labels (map entries in order; a repeated key makes `key_of` refuse),
/// times and values.
fn series(data: &[u8]) -> Option<(Str<'_>, Labels<'_>, Vec<i64>, Vec<f64>)> {
    let mut r = Reader::new(data);
    let (mut name, mut labels, mut ts, mut values) = ("", Vec::new(), Vec::new(), Vec::new());
    while !r.done() {
        match r.key()? {
            (1, LEN) => name = r.text()?,
            (2, LEN) => labels.push(label(r.bytes()?)?),
            (3, LEN) => {
                let mut packed = Reader::new(r.bytes()?);
                while !packed.done() {
                    ts.push(packed.varint()? as i64);
                }
            }
            (3, VARINT) => ts.push(r.varint()? as i64),
            (4, LEN) => {
                let packed = r.bytes()?;
                if packed.len() % 8 != 0 {
                    return None;
                }
                values.extend(packed.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))));
            }
            (4, FIXED64) => values.push(f64::from_bits(r.fixed64()?)),
            _ => return None,
        }
    }
    Some((Str(Cow::Borrowed(name)), Labels(labels), ts, values))
}

/// A map entry (`labels`): its key and value.
fn label(data: &[u8]) -> Option<(Str<'_>, Str<'_>)> {
    let mut entry = Reader::new(data);
    let (mut k, mut v) = ("", "");
    while !entry.done() {
        match entry.key()? {
            (1, LEN) => k = entry.text()?,
            (2, LEN) => v = entry.text()?,
            _ => return None,
        }
    }
    Some((Str(Cow::Borrowed(k)), Str(Cow::Borrowed(v))))
}

/// One `common.Point` with an epoch-millisecond time (an RFC 3339 `timestamp` is the Python
/// path's): name, its labels' entries as written (the bytes from the first entry to the end of the
/// last, which serialisers write together after the other fields), time, value.
fn point(data: &[u8]) -> Option<Row<'_>> {
    let mut r = Reader::new(data);
    let mut row = Row { name: "", labels: &[], ts: 0, value: 0.0 };
    let (mut first, mut last) = (None, 0);
    while !r.done() {
        let at = r.pos;
        match r.key()? {
            (1, LEN) => row.name = r.text()?,
            (2, FIXED64) => row.value = f64::from_bits(r.fixed64()?),
            (3, LEN) if r.bytes()?.is_empty() => {}
            (4, VARINT) => row.ts = r.varint()? as i64,
            (5, LEN) => {
                r.bytes()?;
                first.get_or_insert(at);
                last = r.pos;
                continue;
            }
            _ => return None,
        }
    }
    if let Some(first) = first {
        row.labels = &data[first..last];
    }
    Some(row)
}

struct Row<'a> {
    name: &'a str,
    labels: &'a [u8],
    ts: i64,
    value: f64,
}

/// The label entries of a row, in order (`Row::labels`: its field 5 entries; another field written
/// between two of them is read past).
fn row_labels(labels: &[u8]) -> Option<Labels<'_>> {
    let mut r = Reader::new(labels);
    let mut out = Vec::new();
    while !r.done() {
        match r.key()? {
            (5, LEN) => out.push(label(r.bytes()?)?),
            (_, LEN) => {
                r.bytes()?;
            }
            (_, VARINT) => {
                r.varint()?;
            }
            (_, FIXED64) => {
                r.fixed64()?;
            }
            _ => return None,
        }
    }
    Some(Labels(out))
}

/// The REST body of a request that holds `json_body` alone (a `google.api.HttpBody`: its content
/// type, read past, and its data; no extensions); None for any other request, which
/// `accept_request` reads, or the Python path. Envoy's transcoder writes the field more than once
/// (an empty `json_body`, then the one with the body): occurrences merge as protobuf's parsers merge
/// them, the last `data` written wins.
pub(crate) fn json_body(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(data);
    let mut out: Option<&[u8]> = None;
    while !r.done() {
        match r.key()? {
            (4, LEN) => {
                let mut body = Reader::new(r.bytes()?);
                while !body.done() {
                    match body.key()? {
                        (1, LEN) => {
                            body.bytes()?;
                        }
                        (2, LEN) => out = Some(body.bytes()?),
                        _ => return None,
                    }
                }
                out.get_or_insert(&[]);
            }
            _ => return None,
        }
    }
    out
}

/// The request's datasource and accepted series, in the Python path's order (columnar series in
/// request order, then the rows' series in order of their first row, a series' rows in row order);
/// None unless every point is accepted.
pub(crate) fn accept_request(data: &[u8], now_ms: i64) -> Option<(Cow<'_, str>, Vec<Accepted<'_>>)> {
    let mut r = Reader::new(data);
    let mut datasource = "";
    let mut out = Vec::new();
    let mut rows = Vec::new();
    while !r.done() {
        match r.key()? {
            (1, LEN) => datasource = r.text()?,
            (2, LEN) => rows.push(r.bytes()?),
            (3, LEN) => {
                let (name, labels, ts, values) = series(r.bytes()?)?;
                if ts.is_empty() && values.is_empty() {
                    continue;
                }
                out.push(columns(name, labels, ts, values, now_ms)?);
            }
            // A REST body (4) and anything unknown: the Python path.
            _ => return None,
        }
    }
    // Rows by series (a series' key is its sorted labels: two orders of one label set are one
    // series), apart from the columnar series as the Python path keeps them.
    // A row's labels as written are looked up first: their entries are read, checked and sorted
    // once per distinct name and labels bytes.
    let mut by_key: HashMap<Key<'_>, usize> = HashMap::default();
    let mut by_raw: HashMap<(&str, &[u8]), usize> = HashMap::default();
    for data in rows {
        let row = point(data)?;
        if !row_ok(row.ts, row.value, now_ms) {
            return None;
        }
        let i = match by_raw.get(&(row.name, row.labels)) {
            Some(&i) => i,
            None => {
                let name = Str(Cow::Borrowed(row.name));
                let i = row_series(&mut out, &mut by_key, key_of(name, row_labels(row.labels)?)?);
                by_raw.insert((row.name, row.labels), i);
                i
            }
        };
        out[i].ts.push(row.ts);
        out[i].values.push(row.value);
    }
    if out.is_empty() {
        return None;
    }
    Some((datasource_of(Cow::Borrowed(datasource))?, out))
}
