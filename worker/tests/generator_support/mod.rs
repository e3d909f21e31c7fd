//! Helpers for the generator tests: synthetic images, a tiny IDX dataset, and a scripted HTTP
//! server on 127.0.0.1.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

/// A garment-like test image: a bright textured ellipse on a dark background, varied by `seed`.
pub fn synthetic_image(channels: usize, height: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64) / ((1u64 << 31) as f64)
    };
    let (cx, cy) = (0.4 + 0.2 * next(), 0.4 + 0.2 * next());
    let (rx, ry) = (0.2 + 0.15 * next(), 0.25 + 0.15 * next());
    let period = 3.0 + 4.0 * next();
    let tint: Vec<f64> = (0..channels).map(|_| 0.6 + 0.35 * next()).collect();

    let mut pixels = vec![0.0_f32; channels * height * width];
    for c in 0..channels {
        for y in 0..height {
            for x in 0..width {
                let u = (x as f64 + 0.5) / width as f64;
                let v = (y as f64 + 0.5) / height as f64;
                let inside = ((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2) <= 1.0;
                let texture = if (y as f64 / period).floor() as i64 % 2 == 0 { 1.0 } else { 0.8 };
                let value = if inside { tint[c] * texture } else { 0.02 };
                pixels[(c * height + y) * width + x] = value as f32;
            }
        }
    }
    pixels
}

/// `count` synthetic images as an f32 N×C×H×W tensor on the CPU.
pub fn synthetic_batch(count: usize, channels: usize, height: usize, width: usize) -> Tensor {
    let flat: Vec<f32> = (0..count).flat_map(|i| synthetic_image(channels, height, width, i as u64)).collect();
    Tensor::from_slice(&flat).view([count as i64, channels as i64, height as i64, width as i64]).to_kind(Kind::Float).to_device(Device::Cpu)
}

/// Write plain IDX files of `per_class` 28×28 synthetic images per class (ten classes) for the
/// train and test splits.
pub fn write_idx_dataset(dir: &Path, per_class: usize) {
    let count = per_class * 10;
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    let mut images = Vec::new();
    for word in [0x0803u32, count as u32, 28, 28] {
        images.extend_from_slice(&word.to_be_bytes());
    }
    for (i, &label) in labels.iter().enumerate() {
        let pixels = synthetic_image(1, 28, 28, i as u64 * 31 + u64::from(label));
        images.extend(pixels.iter().map(|&v| (v * 255.0).round() as u8));
    }
    let mut label_file = Vec::new();
    for word in [0x0801u32, count as u32] {
        label_file.extend_from_slice(&word.to_be_bytes());
    }
    label_file.extend_from_slice(&labels);

    for split in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), &images).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), &label_file).unwrap();
    }
}

/// One scripted response of [`StubServer`].
#[derive(Debug, Clone)]
pub struct StubResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait before answering, to provoke client timeouts.
    pub delay: Duration,
}

impl StubResponse {
    pub fn json(status: u16, body: &serde_json::Value) -> StubResponse {
        StubResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> StubResponse {
        StubResponse { status, headers: vec![("Content-Type".into(), content_type.into())], body, delay: Duration::ZERO }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> StubResponse {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> StubResponse {
        self.delay = delay;
        self
    }
}

/// A request the stub received.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with the next scripted response
/// (repeating the last one) and records the requests. One thread per connection.
pub struct StubServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<StubRequest>>>,
}

impl StubServer {
    pub fn start(responses: Vec<StubResponse>) -> StubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(responses)));
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let script = Arc::clone(&script);
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || serve(stream, &script, &recorded));
            }
        });
        StubServer { addr, requests }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, script: &Mutex<VecDeque<StubResponse>>, recorded: &Mutex<Vec<StubRequest>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(request) = read_request(&mut reader) else { return };
    let response = {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().expect("the stub server needs at least one response")
        }
    };
    recorded.lock().unwrap().push(request);

    std::thread::sleep(response.delay);
    let mut stream = stream;
    let mut head = format!("HTTP/1.1 {} Stub\r\nContent-Length: {}\r\nConnection: close\r\n", response.status, response.body.len());
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The client may have given up (timeout tests), so write errors are expected.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response.body);
    let _ = stream.flush();
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<StubRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();

    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }

    let length: usize = headers.iter().find(|(name, _)| name == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(StubRequest { method, path, headers, body })
}
