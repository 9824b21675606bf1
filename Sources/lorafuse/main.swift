print("lorafuse")
