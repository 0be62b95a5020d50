//! The NDJSON `file` source: one file, or a directory of them.
//!
//! Every file is an input of its own (its own event-time progress). Files are listed in
//! name order and dealt to workers round-robin; each file is read in order by exactly one
//! worker. Blank lines carry no event and are skipped; every other line is a payload whose
//! position is its 1-based line number.

use crate::source::{Emit, Polled, Source, SourceError};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Lists the input files of a `file` source: the file itself, or the `*.ndjson`, `*.jsonl`
/// and `*.json` files of a directory (recursively), in name order.
pub fn list_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("ndjson" | "jsonl" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

struct FileInput {
    id: u32,
    path: PathBuf,
    reader: Option<BufReader<File>>,
    line: u64,
    /// Bytes consumed so far (where a resumed read seeks to).
    offset: u64,
    done: bool,
}

/// Reads this worker's share of the files.
pub struct FileSource {
    files: Vec<FileInput>,
    buf: Vec<u8>,
}

impl FileSource {
    /// The files `all[i]` with `i % peers == worker`; input ids are indices into `all`.
    pub fn new(all: &[PathBuf], worker: usize, peers: usize) -> Self {
        let files = all
            .iter()
            .enumerate()
            .filter(|(i, _)| i % peers == worker)
            .map(|(i, p)| FileInput {
                id: i as u32,
                path: p.clone(),
                reader: None,
                line: 0,
                offset: 0,
                done: false,
            })
            .collect();
        FileSource {
            files,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Names of the inputs, indexed by global id: `file:PATH`.
    pub fn input_names(all: &[PathBuf]) -> Vec<String> {
        all.iter()
            .map(|p| format!("file:{}", p.display()))
            .collect()
    }
}

impl Source for FileSource {
    fn inputs(&self) -> Vec<u32> {
        self.files.iter().map(|f| f.id).collect()
    }

    fn aligned(&self) -> bool {
        true
    }

    fn position(&self, local: usize) -> (u64, u64) {
        let f = &self.files[local];
        (f.offset, f.line)
    }

    fn seek(&mut self, local: usize, (offset, line): (u64, u64)) -> Result<(), SourceError> {
        use std::io::{Seek, SeekFrom};
        let f = &mut self.files[local];
        let io = |error| SourceError::Io {
            input: f.path.display().to_string(),
            error,
        };
        let mut file = File::open(&f.path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if offset > len {
            return Err(io(std::io::Error::other(format!(
                "the checkpoint resumes at byte {offset}, but the file has only {len}: it was replaced"
            ))));
        }
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.reader = Some(BufReader::with_capacity(256 * 1024, file));
        (f.offset, f.line, f.done) = (offset, line, false);
        Ok(())
    }

    fn poll(
        &mut self,
        local: usize,
        budget: usize,
        sink: &mut Emit<'_>,
    ) -> Result<Polled, SourceError> {
        let f = &mut self.files[local];
        if f.done {
            return Ok(Polled::Finished);
        }
        let io = |error| SourceError::Io {
            input: f.path.display().to_string(),
            error,
        };
        if f.reader.is_none() {
            let file = File::open(&f.path).map_err(|e| SourceError::Io {
                input: f.path.display().to_string(),
                error: e,
            })?;
            f.reader = Some(BufReader::with_capacity(256 * 1024, file));
        }
        let reader = f.reader.as_mut().expect("opened above");
        let mut n = 0;
        while n < budget {
            self.buf.clear();
            let read = reader.read_until(b'\n', &mut self.buf).map_err(io)?;
            if read == 0 {
                f.reader = None;
                f.done = true;
                return Ok(if n > 0 {
                    Polled::Data(n)
                } else {
                    Polled::Finished
                });
            }
            f.line += 1;
            f.offset += read as u64;
            let mut line = &self.buf[..];
            while let [rest @ .., b'\n' | b'\r'] = line {
                line = rest;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            n += 1;
            if !sink(line, f.line, None) {
                break;
            }
        }
        Ok(Polled::Data(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_dealt_to_workers_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("b.ndjson", "b1\r\n\nb2\n"),
            ("a.ndjson", "a1\na2"),
            ("c.txt", "ignored\n"),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let all = list_files(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].ends_with("a.ndjson"));
        let mut w1 = FileSource::new(&all, 1, 2);
        assert_eq!(w1.inputs(), vec![1]);
        let mut got = Vec::new();
        loop {
            match w1
                .poll(0, 1, &mut |l, pos, _| {
                    got.push((String::from_utf8(l.to_vec()).unwrap(), pos));
                    true
                })
                .unwrap()
            {
                Polled::Finished => break,
                Polled::Data(n) => assert_eq!(n, 1),
                Polled::Empty => unreachable!(),
            }
        }
        assert_eq!(got, vec![("b1".to_string(), 1), ("b2".to_string(), 3)]);
    }

    #[test]
    fn regression_a_file_ending_inside_a_batch_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ndjson"), "1\n2\n3\n").unwrap();
        let all = list_files(dir.path()).unwrap();
        let mut src = FileSource::new(&all, 0, 1);
        let mut n = 0;
        assert_eq!(
            src.poll(0, 10, &mut |_, _, _| {
                n += 1;
                true
            })
            .unwrap(),
            Polled::Data(3)
        );
        assert_eq!(
            src.poll(0, 10, &mut |_, _, _| {
                n += 1;
                true
            })
            .unwrap(),
            Polled::Finished
        );
        assert_eq!(
            src.poll(0, 10, &mut |_, _, _| {
                n += 1;
                true
            })
            .unwrap(),
            Polled::Finished
        );
        assert_eq!(n, 3);
    }
}
