"""The pieces of the SSH bootstrap (controller/bootstrap_ssh.py runs them in order).

- ``errors``: what can go wrong, each error naming the fix;
- ``transport``: one SSH connection to the rescue system -- host-key check
  before the password, login, remote commands, SFTP uploads;
- ``bundle``: what goes to the rescue system -- the one-file executable for
  its architecture, or wheels for its Python -- and the checks on both;
- ``remote_helper``: the program that runs *on* the rescue system (uploaded
  as a file, standard library only).
"""
