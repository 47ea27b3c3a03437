"""The LIBERO simulator behind a pipe: server, client, scripted expert.

A leaf subpackage that imports nothing else of quantvla_ros. Two sides share it:

- the simulator side (``libero_env``, ``libero_expert``, ``libero_server``) runs in the separate
  LIBERO environment ``.venv-libero`` (numpy 1.26, mujoco 2.3.7, robosuite, libero), made by
  ``make libero``; it never imports torch;
- the policy side (``client``) runs in ``.venv`` and needs only numpy and the standard library.

``protocol`` (numpy + standard library) is the wire format both sides speak.
"""
