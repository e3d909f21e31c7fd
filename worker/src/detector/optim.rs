//! Adam with L2 weight decay and a step learning-rate schedule, with inspectable state.
//!
//! tch's own optimizer keeps its moment estimates inside libtorch where they cannot be saved,
//! but a sliced train task must save and restore them to continue exactly where it stopped.
//! The update follows `torch.optim.Adam` (PyTorch 2.x, non-fused path): the weight decay is
//! added to the gradient, and
//! θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).

use std::collections::BTreeMap;

use tch::Tensor;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// Adam over named parameters.
#[derive(Debug)]
pub struct Adam {
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    weight_decay: f64,
    /// Updates taken so far (t in the bias corrections).
    steps: i64,
}

impl Adam {
    /// Create the optimizer over the trainable `params`, with zero moments.
    pub fn new(params: Vec<(String, Tensor)>, weight_decay: f64) -> Result<Adam, tch::TchError> {
        let exp_avg = params.iter().map(|(_, p)| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        let exp_avg_sq = params.iter().map(|(_, p)| p.f_zeros_like()).collect::<Result<Vec<_>, _>>()?;
        Ok(Adam { params, exp_avg, exp_avg_sq, weight_decay, steps: 0 })
    }

    pub fn zero_grad(&mut self) {
        for (_, param) in &mut self.params {
            param.zero_grad();
        }
    }

    /// Take one step with learning rate `lr` using the gradients of the last backward pass.
    pub fn step(&mut self, lr: f64) -> Result<(), tch::TchError> {
        self.steps += 1;
        let correction1 = 1.0 - BETA1.powi(self.steps as i32);
        let correction2_sqrt = (1.0 - BETA2.powi(self.steps as i32)).sqrt();

        let _guard = tch::no_grad_guard();
        for ((_, param), (exp_avg, exp_avg_sq)) in
            self.params.iter_mut().zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
        {
            let mut grad = param.grad();
            if !grad.defined() {
                continue;
            }
            if self.weight_decay != 0.0 {
                grad = grad.f_add(&param.f_mul_scalar(self.weight_decay)?)?;
            }
            // In-place updates in the order of torch.optim.Adam's single-tensor path.
            let _ = exp_avg.f_lerp_(&grad, 1.0 - BETA1)?;
            let _ = exp_avg_sq.f_mul_scalar_(BETA2)?;
            let _ = exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - BETA2)?, &grad)?;

            let mut denominator = exp_avg_sq.f_sqrt()?;
            let _ = denominator.f_div_scalar_(correction2_sqrt)?;
            let _ = denominator.f_add_scalar_(EPSILON)?;
            let _ = param.f_addcdiv_(&exp_avg.f_mul_scalar(-lr / correction1)?, &denominator)?;
        }
        Ok(())
    }

    /// Return the moments by parameter name (`exp_avg/<name>`, `exp_avg_sq/<name>`) and the step count.
    pub fn state(&self) -> Result<(BTreeMap<String, Tensor>, i64), tch::TchError> {
        let mut tensors = BTreeMap::new();
        for ((name, _), (exp_avg, exp_avg_sq)) in self.params.iter().zip(self.exp_avg.iter().zip(&self.exp_avg_sq)) {
            tensors.insert(format!("exp_avg/{name}"), exp_avg.f_to_device(tch::Device::Cpu)?);
            tensors.insert(format!("exp_avg_sq/{name}"), exp_avg_sq.f_to_device(tch::Device::Cpu)?);
        }
        Ok((tensors, self.steps))
    }

    /// Restore moments and step count saved by [`state`](Adam::state). Returns the name of the
    /// first moment that is missing or has the wrong shape as an error.
    pub fn restore(&mut self, tensors: &BTreeMap<String, Tensor>, steps: i64) -> Result<(), String> {
        for ((name, param), (exp_avg, exp_avg_sq)) in
            self.params.iter().zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
        {
            for (prefix, moment) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
                let key = format!("{prefix}/{name}");
                let saved = tensors.get(&key).ok_or_else(|| format!("optimizer moment {key} is missing"))?;
                if saved.size() != param.size() {
                    return Err(format!("optimizer moment {key} has shape {:?}, expected {:?}", saved.size(), param.size()));
                }
                *moment = saved.to_device(param.device());
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Learning rate of epoch `epoch` (0-based): `lr` times 0.1 for each milestone at or before it,
/// so milestone m lowers the rate from the (m+1)-th epoch on.
pub fn scheduled_lr(lr: f64, milestones: &[u32], epoch: u32) -> f64 {
    let passed = milestones.iter().filter(|&&milestone| milestone <= epoch).count() as i32;
    lr * 0.1f64.powi(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_drops_tenfold_per_milestone() {
        assert_eq!(scheduled_lr(1.0, &[2, 4], 0), 1.0);
        assert_eq!(scheduled_lr(1.0, &[2, 4], 1), 1.0);
        assert!((scheduled_lr(1.0, &[2, 4], 2) - 0.1).abs() < 1e-15);
        assert!((scheduled_lr(1.0, &[2, 4], 5) - 0.01).abs() < 1e-15);
    }

    #[test]
    fn first_step_moves_by_learning_rate() {
        // With bias correction, Adam's first step is lr·sign(g) (up to ε).
        let param = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut adam = Adam::new(vec![("p".into(), param.shallow_clone())], 0.0).unwrap();
        let loss = (&param * Tensor::from_slice(&[3.0f32, -0.5])).sum(tch::Kind::Float);
        loss.backward();
        adam.step(0.1).unwrap();
        let values = Vec::<f32>::try_from(&param).unwrap();
        assert!((values[0] - 0.9).abs() < 1e-6, "{values:?}");
        assert!((values[1] + 1.9).abs() < 1e-6, "{values:?}");
    }

    #[test]
    fn state_round_trips() {
        let param = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut adam = Adam::new(vec![("p".into(), param.shallow_clone())], 0.01).unwrap();
        (&param * &param).sum(tch::Kind::Float).backward();
        adam.step(0.1).unwrap();
        let (tensors, steps) = adam.state().unwrap();
        assert_eq!(steps, 1);

        let other = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut restored = Adam::new(vec![("p".into(), other)], 0.01).unwrap();
        restored.restore(&tensors, steps).unwrap();
        let (again, _) = restored.state().unwrap();
        assert!(again["exp_avg/p"].equal(&tensors["exp_avg/p"]));
        assert!(again["exp_avg_sq/p"].equal(&tensors["exp_avg_sq/p"]));

        let mut wrong = Adam::new(vec![("q".into(), Tensor::zeros([2], tch::kind::FLOAT_CPU))], 0.0).unwrap();
        let error = wrong.restore(&tensors, 1).unwrap_err();
        assert!(error.contains("exp_avg/q"), "{error}");
    }
}
