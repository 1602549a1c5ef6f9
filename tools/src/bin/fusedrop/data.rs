//! The digits data set (data/digits.csv.gz, embedded in the binary so the demo runs from any
//! directory and on a GPU host that has only the executable), and its split into training and
//! held-out images.

use std::io::Read;

use flate2::read::GzDecoder;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

/// Pixels per image (8 x 8).
pub const PIXELS: usize = 64;
/// Classes (the digits 0 to 9).
pub const CLASSES: usize = 10;

const DIGITS_CSV_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/digits.csv.gz"
));

/// A set of images: `x` is `[len, PIXELS]` row-major with pixels scaled to `[0, 1]`.
#[derive(Debug, Clone)]
pub struct Images {
    /// The pixels, one image a row.
    pub x: Vec<f32>,
    /// The class of each image.
    pub labels: Vec<u8>,
}

impl Images {
    /// How many images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Images {
        let mut x = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            x.extend_from_slice(&self.x[i * PIXELS..(i + 1) * PIXELS]);
        }
        Images {
            x,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// All 1797 images of the embedded data set, in file order.
pub fn load() -> Result<Images, String> {
    let mut text = String::new();
    GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| format!("the embedded digits.csv.gz could not be decompressed: {e}"))?;
    parse(&text)
}

fn parse(text: &str) -> Result<Images, String> {
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(format!(
                "digits.csv line {}: {} fields; expected {} pixels and a label",
                line_no + 1,
                fields.len(),
                PIXELS
            ));
        }
        for field in &fields[..PIXELS] {
            let v: u8 = field.parse().ok().filter(|&v| v <= 16).ok_or_else(|| {
                format!(
                    "digits.csv line {}: pixel '{field}'; expected an integer 0..=16",
                    line_no + 1
                )
            })?;
            x.push(f32::from(v) / 16.0);
        }
        let label: u8 = fields[PIXELS]
            .parse()
            .ok()
            .filter(|&l| usize::from(l) < CLASSES)
            .ok_or_else(|| {
                format!(
                    "digits.csv line {}: label '{}'; expected 0..=9",
                    line_no + 1,
                    fields[PIXELS]
                )
            })?;
        labels.push(label);
    }
    Ok(Images { x, labels })
}

/// A fixed, seed-determined split: `train` images to learn from and `val` held-out images.
pub struct Split {
    /// The training images.
    pub train: Images,
    /// The held-out images.
    pub val: Images,
}

/// Shuffles the image indices with `seed` and takes the first `train` for training and the
/// next `val` (at most what is left) as held-out images.
pub fn split(all: &Images, train: usize, val: usize, seed: u64) -> Result<Split, String> {
    if train == 0 || train >= all.len() {
        return Err(format!(
            "training-set size {train}; expected 1 to {} (the data set has {} images)",
            all.len() - 1,
            all.len()
        ));
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5EED_DA7A));
    let val_end = (train + val).min(all.len());
    Ok(Split {
        train: all.select(&order[..train]),
        val: all.select(&order[train..val_end]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_data_set_has_1797_images_of_every_digit() {
        let all = load().unwrap();
        assert_eq!(all.len(), 1797);
        assert_eq!(all.x.len(), 1797 * PIXELS);
        assert!(all.x.iter().all(|v| (0.0..=1.0).contains(v)));
        for digit in 0..CLASSES as u8 {
            let count = all.labels.iter().filter(|&&l| l == digit).count();
            assert!(count > 150, "digit {digit}: {count} images");
        }
    }

    #[test]
    fn split_is_fixed_by_the_seed_and_disjoint() {
        let all = load().unwrap();
        let a = split(&all, 200, 600, 1).unwrap();
        let b = split(&all, 200, 600, 1).unwrap();
        let c = split(&all, 200, 600, 2).unwrap();
        assert_eq!((a.train.len(), a.val.len()), (200, 600));
        assert_eq!(a.train.x, b.train.x);
        assert_eq!(a.val.labels, b.val.labels);
        assert_ne!(a.train.x, c.train.x);
        // The held-out rows are other rows of the file than the training rows.
        let rows = |set: &Images| -> Vec<Vec<u32>> {
            set.x
                .chunks(PIXELS)
                .map(|r| r.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        let train = rows(&a.train);
        let val_in_train = rows(&a.val).iter().filter(|r| train.contains(r)).count();
        // The data set holds a few duplicate images; anything more means the split overlaps.
        assert!(
            val_in_train < 5,
            "{val_in_train} held-out images are training images"
        );
        assert!(split(&all, 0, 10, 1).is_err());
        assert!(split(&all, 1797, 10, 1).is_err());
    }

    #[test]
    fn malformed_rows_are_errors_that_name_the_line() {
        let good = format!("{}1\n", "0,".repeat(PIXELS));
        assert_eq!(parse(&good).unwrap().labels, vec![1]);
        let short = format!("{good}1,2,3\n");
        assert!(parse(&short).unwrap_err().contains("line 2"));
        let bad_pixel = format!("{}17,1\n", "0,".repeat(PIXELS - 1));
        assert!(parse(&bad_pixel).unwrap_err().contains("pixel '17'"));
        let bad_label = format!("{}10\n", "0,".repeat(PIXELS));
        assert!(parse(&bad_label).unwrap_err().contains("label '10'"));
    }
}
