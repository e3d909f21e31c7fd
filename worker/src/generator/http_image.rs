//! An OpenAI-compatible image API as a generator.
//!
//! `generations` mode sends `POST {url}/images/generations` with the concept's description as
//! the prompt (text to image). `edits` mode sends `POST {url}/images/edits` as multipart form
//! data with the source image as a PNG (image to image). The response's `data[0]` must carry
//! `b64_json` or a `url` to fetch. The image is decoded, converted to the dataset's channels
//! and resized to its height and width. Timeouts, 429, 5xx and unusable images are retried
//! with exponential backoff, as for the LLM.

use std::io::Cursor;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use image::ImageFormat;
use kka_shared::config::GeneratorSettings;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use tch::Tensor;

use super::{Batch, Generator, GeneratorError};
use crate::knowledge::http::{self, AttemptError, Backoff};

/// Largest image side accepted from the API, in pixels, against decompression bombs.
pub const MAX_IMAGE_SIDE: u32 = 8192;

#[derive(Deserialize)]
struct ImageResponse {
    data: Vec<ImageData>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
    url: Option<String>,
}

/// Shape of the images the dataset uses.
#[derive(Debug, Clone, Copy)]
struct TargetShape {
    channels: u32,
    height: u32,
    width: u32,
}

/// An image API client configured from `[generator]`.
pub struct HttpImageGenerator {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    /// Base URL, which may contain a password.
    base_url: String,
    /// Base URL with any password hidden, for messages.
    url_label: String,
    edits: bool,
    model: String,
    size: String,
    api_key: Option<String>,
    key_env: String,
    max_bytes: usize,
    max_attempts: u32,
    concurrency: usize,
    backoff: Backoff,
}

impl HttpImageGenerator {
    pub fn new(settings: &GeneratorSettings, runtime: tokio::runtime::Handle) -> Result<HttpImageGenerator, GeneratorError> {
        let Some(url) = &settings.image_api_url else {
            return Err(GeneratorError::Setup("generator.image_api_url is unset; set the image API's base URL".into()));
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.image_api_timeout_secs))
            .build()
            .map_err(|error| GeneratorError::Setup(error.to_string()))?;

        Ok(HttpImageGenerator {
            http,
            runtime,
            base_url: url.expose().trim_end_matches('/').to_owned(),
            url_label: url.redacted().trim_end_matches('/').to_owned(),
            edits: settings.image_api_mode == "edits",
            model: settings.image_api_model.clone(),
            size: settings.image_api_size.clone(),
            api_key: std::env::var(&settings.image_api_key_env).ok().filter(|key| !key.is_empty()),
            key_env: settings.image_api_key_env.clone(),
            max_bytes: settings.image_api_max_bytes,
            max_attempts: settings.image_api_max_attempts,
            concurrency: settings.image_api_concurrency,
            backoff: Backoff::default(),
        })
    }

    /// Return a copy that waits `backoff` between attempts. Tests use short delays.
    pub fn with_backoff(mut self, backoff: Backoff) -> HttpImageGenerator {
        self.backoff = backoff;
        self
    }

    fn endpoint(&self) -> String {
        let path = if self.edits { "images/edits" } else { "images/generations" };
        format!("{}/{path}", self.base_url)
    }

    fn authorization(&self) -> Result<Option<HeaderValue>, AttemptError> {
        let Some(key) = &self.api_key else { return Ok(None) };
        let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| AttemptError::Rejected {
            status: 0,
            excerpt: format!("the API key in ${} contains characters not allowed in an HTTP header", self.key_env),
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Request one image for one prompt, retrying per the backoff rules. Returns f32 C×H×W in
    /// [0, 1].
    async fn image(&self, prompt: String, source_png: Option<Vec<u8>>, target: TargetShape) -> Result<Vec<f32>, GeneratorError> {
        let result = http::with_retries("image api", self.max_attempts, self.backoff, |_| {
            let prompt = prompt.clone();
            let source_png = source_png.clone();
            async move {
                let body = self.send_once(prompt, source_png).await?;
                let bytes = self.image_bytes(&body).await?;
                decode_to_target(&bytes, target)
            }
        })
        .await;
        result.map_err(|failure| self.failure_error(failure))
    }

    async fn send_once(&self, prompt: String, source_png: Option<Vec<u8>>) -> Result<Vec<u8>, AttemptError> {
        let mut request = self.http.post(self.endpoint());
        if let Some(value) = self.authorization()? {
            request = request.header(AUTHORIZATION, value);
        }
        request = match source_png {
            Some(png) => request.multipart(self.edit_form(prompt, png)?),
            None => request.json(&serde_json::json!({"model": self.model, "prompt": prompt, "n": 1, "size": self.size})),
        };

        let mut response = request.send().await.map_err(|error| http::send_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = http::read_limited(&mut response, self.max_bytes).await?;
        if !status.is_success() {
            return Err(http::status_error(status, &headers, &body));
        }
        require_content_type(&headers, "json", &body)?;
        Ok(body)
    }

    // NOTE: the source goes up at the dataset's resolution, such as 28×28. Only the stub server
    // in the tests has received it; a hosted API may require a larger image.
    fn edit_form(&self, prompt: String, png: Vec<u8>) -> Result<reqwest::multipart::Form, AttemptError> {
        let part = reqwest::multipart::Part::bytes(png)
            .file_name("source.png")
            .mime_str("image/png")
            .map_err(|error| AttemptError::Rejected { status: 0, excerpt: error.to_string() })?;
        Ok(reqwest::multipart::Form::new()
            .text("model", self.model.clone())
            .text("prompt", prompt)
            .text("n", "1")
            .text("size", self.size.clone())
            .part("image", part))
    }

    /// Extract the encoded image of a JSON response: decoded from `b64_json`, or fetched from
    /// `url`.
    async fn image_bytes(&self, body: &[u8]) -> Result<Vec<u8>, AttemptError> {
        let malformed = |reason: String| AttemptError::Malformed { reason, excerpt: http::excerpt(body) };
        let response: ImageResponse =
            serde_json::from_slice(body).map_err(|error| malformed(format!("the response is not an image response: {error}")))?;
        let Some(first) = response.data.into_iter().next() else {
            return Err(malformed("the response's data array is empty".into()));
        };

        if let Some(encoded) = first.b64_json {
            return base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|error| malformed(format!("b64_json is not valid base64: {error}")));
        }
        match first.url {
            Some(url) => self.fetch(&url).await,
            None => Err(malformed("data[0] has neither b64_json nor url".into())),
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, AttemptError> {
        let mut response = self.http.get(url).send().await.map_err(|error| http::send_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = http::read_limited(&mut response, self.max_bytes).await?;
        if !status.is_success() {
            return Err(http::status_error(status, &headers, &body));
        }
        require_content_type(&headers, "image/", &body)?;
        Ok(body)
    }

    fn failure_error(&self, failure: http::RetryFailure) -> GeneratorError {
        let url = self.endpoint().replace(&self.base_url, &self.url_label);
        match failure.last {
            AttemptError::Transient { reason, .. } => GeneratorError::ImageApiUnavailable { url, attempts: failure.attempts, reason },
            AttemptError::Malformed { reason, excerpt } => {
                let reason = if excerpt.is_empty() { reason } else { format!("{reason}; the response began {excerpt:?}") };
                GeneratorError::ImageApiMalformed { url, attempts: failure.attempts, reason }
            }
            AttemptError::Rejected { status, excerpt } => {
                GeneratorError::ImageApiRejected { url, status, excerpt, key_env: self.key_env.clone() }
            }
        }
    }
}

impl Generator for HttpImageGenerator {
    fn name(&self) -> &'static str {
        "http-image"
    }

    fn version(&self) -> String {
        let mode = if self.edits { "edits" } else { "generations" };
        format!("{}:{mode}", self.model)
    }

    fn uses_source(&self) -> bool {
        self.edits
    }

    fn generate(&mut self, batch: &Batch<'_>) -> Result<Tensor, GeneratorError> {
        let tensor_error = |source| GeneratorError::Tensor { operation: "image api batch".into(), source };
        let (n, channels, height, width) = batch.sources.size4().map_err(tensor_error)?;
        let target = TargetShape { channels: channels as u32, height: height as u32, width: width as u32 };
        let sources = if self.edits { Some(super::pipeline::to_pixels(batch.sources).map_err(tensor_error)?) } else { None };
        let image_len = (channels * height * width) as usize;

        let mut requests = Vec::with_capacity(n as usize);
        for (row, plan) in batch.plans.iter().enumerate() {
            let concept = &batch.concepts[plan.concept];
            let prompt = format!("{}. One centred object on a plain background.", concept.description);
            let png = match &sources {
                Some(pixels) => Some(encode_png(&pixels[row * image_len..(row + 1) * image_len], target)?),
                None => None,
            };
            requests.push((prompt, png));
        }

        let images: Vec<Result<Vec<f32>, GeneratorError>> = self.runtime.block_on(
            futures::stream::iter(requests)
                .map(|(prompt, png)| self.image(prompt, png, target))
                .buffered(self.concurrency)
                .collect(),
        );
        let mut flat = Vec::with_capacity(n as usize * image_len);
        for image in images {
            flat.extend(image?);
        }
        Tensor::f_from_slice(&flat)
            .and_then(|tensor| tensor.f_view_([n, channels, height, width]))
            .and_then(|tensor| tensor.f_to(batch.sources.device()))
            .map_err(tensor_error)
    }
}

fn require_content_type(headers: &HeaderMap, expected: &str, body: &[u8]) -> Result<(), AttemptError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if content_type.to_ascii_lowercase().contains(expected) {
        return Ok(());
    }
    Err(AttemptError::Malformed {
        reason: format!("the response has content type {content_type:?}, expected {expected}"),
        excerpt: http::excerpt(body),
    })
}

/// Decode an encoded image, convert it to the target's channels and resize it. Returns f32
/// C×H×W in [0, 1].
fn decode_to_target(bytes: &[u8], target: TargetShape) -> Result<Vec<f32>, AttemptError> {
    let malformed = |reason: String| AttemptError::Malformed { reason, excerpt: String::new() };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| malformed(format!("failed to read the image: {error}")))?;
    if reader.format().is_none() {
        return Err(malformed(format!("the {} image bytes are in no known image format", bytes.len())));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|error| malformed(format!("the image is corrupt: {error}")))?;

    let resized = decoded.resize_exact(target.width, target.height, image::imageops::FilterType::Triangle);
    match target.channels {
        1 => Ok(resized.to_luma8().into_raw().iter().map(|&v| f32::from(v) / 255.0).collect()),
        3 => Ok(channels_first(&resized.to_rgb8().into_raw(), 3)),
        other => Err(AttemptError::Rejected { status: 0, excerpt: format!("datasets with {other} channels are not supported; use 1 or 3") }),
    }
}

/// Interleaved H×W×C u8 pixels to C×H×W f32 in [0, 1].
fn channels_first(interleaved: &[u8], channels: usize) -> Vec<f32> {
    let pixels = interleaved.len() / channels;
    let mut planar = vec![0.0_f32; interleaved.len()];
    for (position, value) in interleaved.iter().enumerate() {
        planar[(position % channels) * pixels + position / channels] = f32::from(*value) / 255.0;
    }
    planar
}

/// PNG bytes of one C×H×W u8 image.
fn encode_png(pixels: &[u8], target: TargetShape) -> Result<Vec<u8>, GeneratorError> {
    let image = kka_shared::export::to_dynamic_image(pixels, [target.channels, target.height, target.width])
        .map_err(|error| GeneratorError::Setup(error.to_string()))?;
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|error| GeneratorError::Setup(format!("failed to encode the source image as PNG: {error}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_first_reorders() {
        let planar = channels_first(&[10, 20, 30, 40, 50, 60], 3);
        let expected: Vec<f32> = [10, 40, 20, 50, 30, 60].iter().map(|&v| v as f32 / 255.0).collect();
        assert_eq!(planar, expected);
    }

    #[test]
    fn decode_rejects_garbage_and_resizes() {
        let target = TargetShape { channels: 1, height: 4, width: 4 };
        assert!(matches!(decode_to_target(b"not an image", target), Err(AttemptError::Malformed { .. })));

        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 8, image::Rgb([255, 255, 255])));
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let pixels = decode_to_target(&png, target).unwrap();
        assert_eq!(pixels.len(), 16);
        assert!(pixels.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }
}
