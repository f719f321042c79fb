//! An RGB raster: filled rectangles, lines, text in the built-in font, and PNG encoding.
//!
//! What must hold: drawing outside the canvas is clipped, never a panic; coordinates are pixels
//! from the top-left corner.

use super::font;

/// A colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rgb(pub u8, pub u8, pub u8);

/// An RGB image.
#[derive(Clone, Debug)]
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: u32, height: u32, background: Rgb) -> Canvas {
        let n = width as usize * height as usize;
        let mut pixels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            pixels.extend([background.0, background.1, background.2]);
        }
        Canvas {
            width,
            height,
            pixels,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The colour at (`x`, `y`), if inside.
    pub fn get(&self, x: i32, y: i32) -> Option<Rgb> {
        let i = self.index(x, y)?;
        Some(Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]))
    }

    fn index(&self, x: i32, y: i32) -> Option<usize> {
        let x = u32::try_from(x).ok().filter(|&x| x < self.width)?;
        let y = u32::try_from(y).ok().filter(|&y| y < self.height)?;
        Some((y as usize * self.width as usize + x as usize) * 3)
    }

    /// Sets one pixel (ignored outside).
    pub fn set(&mut self, x: i32, y: i32, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.pixels[i] = c.0;
            self.pixels[i + 1] = c.1;
            self.pixels[i + 2] = c.2;
        }
    }

    /// Fills the rectangle from (`x0`, `y0`) to (`x1`, `y1`), both corners included.
    pub fn fill_rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb) {
        let (x0, x1) = (x0.min(x1).max(0), x0.max(x1).min(self.width as i32 - 1));
        let (y0, y1) = (y0.min(y1).max(0), y0.max(y1).min(self.height as i32 - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                self.set(x, y, c);
            }
        }
    }

    /// The outline of a rectangle, one pixel wide.
    pub fn stroke_rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb) {
        self.fill_rect(x0, y0, x1, y0, c);
        self.fill_rect(x0, y1, x1, y1, c);
        self.fill_rect(x0, y0, x0, y1, c);
        self.fill_rect(x1, y0, x1, y1, c);
    }

    /// A straight line (Bresenham's), `thickness` pixels wide.
    pub fn line(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, thickness: u32, c: Rgb) {
        let t = thickness.max(1) as i32;
        let (lo, hi) = (-(t - 1) / 2, t / 2);
        let dx = (x1 - x0).abs();
        let dy = -(y1 - y0).abs();
        let sx = if x0 < x1 { 1 } else { -1 };
        let sy = if y0 < y1 { 1 } else { -1 };
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        // Lines are at most a few thousand pixels: bounded by the canvas, not by the values.
        let steps = dx.max(-dy) + 1;
        for _ in 0..steps {
            self.fill_rect(x + lo, y + lo, x + hi, y + hi, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Width in pixels of `text` at `scale`.
    pub fn text_width(text: &str, scale: u32) -> u32 {
        let n = text.chars().count() as u32;
        if n == 0 {
            0
        } else {
            (n * font::ADVANCE - 1) * scale
        }
    }

    /// Height in pixels of a line of text at `scale`.
    pub fn text_height(scale: u32) -> u32 {
        font::HEIGHT * scale
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font cell `scale` pixels square.
    pub fn text(&mut self, x: i32, y: i32, text: &str, scale: u32, c: Rgb) {
        let s = scale.max(1) as i32;
        let mut left = x;
        for ch in text.chars() {
            for row in 0..font::HEIGHT {
                for col in 0..font::WIDTH {
                    if font::ink(ch, col, row) {
                        let px = left + col as i32 * s;
                        let py = y + row as i32 * s;
                        self.fill_rect(px, py, px + s - 1, py + s - 1, c);
                    }
                }
            }
            left += font::ADVANCE as i32 * s;
        }
    }

    /// The image as a PNG file.
    pub fn encode_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            w.write_image_data(&self.pixels)?;
            w.finish()?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb = Rgb(255, 255, 255);
    const RED: Rgb = Rgb(255, 0, 0);

    #[test]
    fn lines_reach_both_ends_and_clip_outside() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.line(1, 1, 18, 8, 1, RED);
        assert_eq!(c.get(1, 1), Some(RED));
        assert_eq!(c.get(18, 8), Some(RED));
        // Every column between the ends has exactly one red pixel (a shallow line).
        for x in 1..=18 {
            let n = (0..10).filter(|&y| c.get(x, y) == Some(RED)).count();
            assert_eq!(n, 1, "column {x}");
        }
        // Far outside: clipped, no panic.
        c.line(-100, -100, 1000, 5, 3, RED);
        c.fill_rect(-5, -5, 2, 2, RED);
        assert_eq!(c.get(0, 0), Some(RED));
        assert_eq!(c.get(20, 0), None);
    }

    #[test]
    fn text_draws_the_glyphs_at_scale() {
        let mut c = Canvas::new(40, 20, WHITE);
        c.text(2, 3, "L1", 2, RED);
        // 'L' at scale 2: its left column is 2 pixels wide, 14 high.
        for y in 3..17 {
            assert_eq!(c.get(2, y), Some(RED));
            assert_eq!(c.get(3, y), Some(RED));
        }
        assert_eq!(c.get(4, 3), Some(WHITE));
        assert_eq!(Canvas::text_width("L1", 2), 22);
        assert_eq!(Canvas::text_height(2), 14);
    }

    #[test]
    fn the_png_decodes_to_the_same_pixels() {
        let mut c = Canvas::new(7, 5, WHITE);
        c.set(3, 2, RED);
        let bytes = c.encode_png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let at = |x: usize, y: usize| {
            let i = (y * 7 + x) * 3;
            Rgb(buf[i], buf[i + 1], buf[i + 2])
        };
        assert_eq!(at(3, 2), RED);
        assert_eq!(at(0, 0), WHITE);
    }
}
