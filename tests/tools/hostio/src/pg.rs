//! Just enough of the PostgreSQL frontend/backend protocol (version 3.0)
//! for a startup with trust authentication and simple queries.

use clawos_tool::{network::Connection, types::ErrorCode};

/// A session on a proxied connection.
pub struct Client<'c> {
    conn: &'c Connection,
    buf: Vec<u8>,
    /// The server_version parameter the server reported.
    pub server_version: String,
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

impl<'c> Client<'c> {
    /// Send the startup message and read until ReadyForQuery.
    pub fn start(conn: &'c Connection) -> Result<Client<'c>, ErrorCode> {
        let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
        for s in ["user", "postgres", "database", "postgres", ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        let mut c = Client {
            conn,
            buf: Vec::new(),
            server_version: String::new(),
        };
        c.send(&startup)?;
        loop {
            let (kind, body) = c.next()?;
            match kind {
                b'R' if body[..4] != [0, 0, 0, 0] => return Err(ErrorCode::Eperm), // needs a password
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    if parts.next() == Some(b"server_version") {
                        c.server_version =
                            String::from_utf8_lossy(parts.next().unwrap_or(b"")).into_owned();
                    }
                }
                b'E' => return Err(ErrorCode::Eproto),
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    fn send(&self, mut data: &[u8]) -> Result<(), ErrorCode> {
        while !data.is_empty() {
            let n = self.conn.send(data)? as usize;
            data = &data[n..];
        }
        Ok(())
    }

    /// The next backend message: (type, body).
    fn next(&mut self) -> Result<(u8, Vec<u8>), ErrorCode> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let kind = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Ok((kind, body));
                }
            }
            let more = self.conn.receive(65536)?;
            if more.is_empty() {
                return Err(ErrorCode::Eio);
            }
            self.buf.extend_from_slice(&more);
        }
    }

    /// Run `sql` and return the first row's columns as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, ErrorCode> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(&message(b'Q', &body))?;
        let mut row = None;
        loop {
            let (kind, body) = self.next()?;
            match kind {
                b'D' if row.is_none() => {
                    let cols = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut at = 2;
                    let mut out = Vec::with_capacity(cols);
                    for _ in 0..cols {
                        let len = i32::from_be_bytes([
                            body[at],
                            body[at + 1],
                            body[at + 2],
                            body[at + 3],
                        ]);
                        at += 4;
                        if len < 0 {
                            out.push(String::from("NULL"));
                        } else {
                            out.push(
                                String::from_utf8_lossy(&body[at..at + len as usize]).into_owned(),
                            );
                            at += len as usize;
                        }
                    }
                    row = Some(out);
                }
                b'E' => return Err(ErrorCode::Eproto),
                b'Z' => return row.ok_or(ErrorCode::Enoent),
                _ => {}
            }
        }
    }

    /// Say goodbye.
    pub fn terminate(&mut self) -> Result<(), ErrorCode> {
        self.send(&message(b'X', &[]))
    }
}
