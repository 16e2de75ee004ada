"""The method: DDIM, the h-space split, directions f_t, losses, training, editing, the LPIPS schedule.

Notation (paper symbol -> code name -> where):

    x_t, x_{t_0}        sample, x_T              ddim.ddim_step, ddim.ddim_invert (x_T is x_{t_0} for t_0 < T - 1)
    alpha_t             alpha_prod_t             ddim.alpha_prod
    P_t(eps), D_t(eps)  pred_original_sample,    ddim.pred_original_sample, ddim.pred_sample_direction
                        pred_sample_direction    (Eq. 3, 5, 6; one step: ddim.ddim_step)
    h, skips, temb      h, res_samples, emb      hspace.HUNet.down -> DownState (h: the mid block output, Sec. 3.3)
    eps(x_t | delta_h)  eps_edit                 hspace.asyrp_step (one down pass, two up passes, Eq. 9's step)
    delta_h, f_t(h)     delta_h, direction       directions.build_direction (official, concat, delta_h_t, global)
    delta_h_t^mean,     DeltaHTable,             edit.mean_direction (Sec. 5.3)
    delta_h^global      GlobalDirection
    L_direction, Eq. 7  AsyrpLoss                losses.AsyrpLoss, losses.direction_loss
    lambda_CLIP, _recon lambda_clip, lambda_recon config.LossConfig (lambda_recon None: 3 x cos, Table 3)
    Algorithm 2         train_direction          train.train_direction, config.TrainConfig
    Algorithm 1         asyrp_generate           edit.asyrp_generate, config.EditConfig
    t_edit, t_boost     t_edit, t_boost          schedule.choose_schedule (Sec. 4.1, 4.2), config.check_interval
    S_for, S_gen        n_inv_steps, n_gen_steps ddim.timestep_grid (official int(linspace(0, 1, S) * t_0 + 1e-6))
"""
