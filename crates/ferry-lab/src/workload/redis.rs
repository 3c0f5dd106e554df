//! A minimal RESP client for tests: one TCP connection, opened from inside a network namespace,
//! so a test can prove the *same* connection survives a checkpoint or a migration.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

pub struct RedisConn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub local_port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

/// Opens a TCP connection from inside `netns_path` (a thread setns'd there creates the socket;
/// the socket keeps its namespace wherever it is used afterwards).
pub fn connect_in_netns(netns_path: &str, addr: &str) -> std::io::Result<TcpStream> {
    let path = netns_path.to_owned();
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let sa: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
        TcpStream::connect_timeout(&sa, Duration::from_secs(5))
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}

impl RedisConn {
    pub fn connect(netns_path: &str, ip: &str) -> std::io::Result<RedisConn> {
        let stream = connect_in_netns(netns_path, &format!("{ip}:6379"))?;
        stream.set_nodelay(true)?;
        // Long enough to ride out a checkpoint/restore or a migration.
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let local_port = stream.local_addr()?.port();
        let reader = BufReader::new(stream.try_clone()?);
        Ok(RedisConn {
            stream,
            reader,
            local_port,
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&buf)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        Ok(line.trim_end_matches("\r\n").to_owned())
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; n as usize + 2];
                    std::io::Read::read_exact(&mut self.reader, &mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut v = Vec::new();
                for _ in 0..n.max(0) {
                    v.push(self.read_reply()?);
                }
                Reply::Array(v)
            }
            _ => return Err(bad()),
        })
    }

    pub fn int(&mut self, args: &[&str]) -> std::io::Result<i64> {
        match self.cmd(args)? {
            Reply::Int(n) => Ok(n),
            other => Err(std::io::Error::other(format!(
                "{args:?}: expected an integer, got {other:?}"
            ))),
        }
    }
}
